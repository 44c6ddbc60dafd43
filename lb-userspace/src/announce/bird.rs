//! Driving BIRD 2, the BGP daemon sluice announces through.
//!
//! sluice owns one file of BIRD configuration, `--bird-routes`: two static protocols,
//! `sluice4` and `sluice6`, holding a host route for each address to announce. The operator's
//! `bird.conf` includes it and exports those protocols' routes to the routers (see
//! docs/OPERATING.md, "Several nodes"). To change what is announced sluice rewrites the file
//! (a temporary file renamed over it, so BIRD never reads half of it) and asks BIRD to
//! `configure` through its control socket; BIRD applies a static protocol's changed routes
//! without restarting its BGP sessions.
//!
//! The routes are `blackhole` in BIRD's own table only: BGP exports them with this node as
//! the next hop. bird.conf must not export `sluice4`/`sluice6` to the kernel.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use crate::model::files;

/// Where BIRD is and the file it includes.
#[derive(Clone, Debug)]
pub struct Bird {
    /// BIRD's control socket (`bird -s`; Debian's default `/run/bird/bird.ctl`).
    pub socket: PathBuf,
    /// The file sluice writes and bird.conf includes.
    pub routes_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    #[error("writing BIRD's routes file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "asking BIRD on {socket} to reconfigure: {source} (is bird running with `-s {socket}`?)"
    )]
    Control {
        socket: String,
        source: birdc::Error,
    },
    #[error("--bird-routes {path}: {problem}")]
    RoutesFile { path: String, problem: String },
    #[error("BIRD refused its configuration with sluice's routes file {path}: {message} (check that bird.conf includes it once, at the top level)")]
    Refused { path: String, message: String },
}

/// The routes file for `routes`: every address as a host route in its family's protocol.
pub fn render(routes: &BTreeSet<IpAddr>) -> String {
    let mut text = String::from(
        "# Written by sluice (sluice run --bird-routes): the listener addresses this node\n\
         # announces. Do not edit; include it from bird.conf and export the routes of the\n\
         # protocols sluice4 and sluice6 to your routers (never to the kernel).\n",
    );
    for (protocol, channel, v4) in [("sluice4", "ipv4", true), ("sluice6", "ipv6", false)] {
        let _ = writeln!(text, "protocol static {protocol} {{\n  {channel};");
        for address in routes.iter().filter(|a| a.is_ipv4() == v4) {
            let length = if v4 { 32 } else { 128 };
            let _ = writeln!(text, "  route {address}/{length} blackhole;");
        }
        text.push_str("}\n");
    }
    text
}

impl Bird {
    /// What can be known before starting: the routes file can be written where it is (its
    /// directory exists; the file, if there, is a regular file). BIRD itself may come later.
    pub fn check(&self) -> Result<(), BirdError> {
        let problem = |problem: String| BirdError::RoutesFile {
            path: self.routes_file.display().to_string(),
            problem,
        };
        let dir = match self.routes_file.parent() {
            Some(dir) if dir.as_os_str().is_empty() => Path::new("."),
            Some(dir) => dir,
            None => return Err(problem("names no file".into())),
        };
        if !dir.is_dir() {
            return Err(problem(format!(
                "its directory {} does not exist (the file is BIRD's to include: put it next to bird.conf)",
                dir.display()
            )));
        }
        match std::fs::symlink_metadata(&self.routes_file) {
            Ok(meta) if !meta.is_file() => Err(problem(
                "is not a regular file; sluice replaces it whole on every change".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Makes BIRD announce exactly `routes`: the file rewritten, then `configure`.
    pub async fn announce(&self, routes: &BTreeSet<IpAddr>) -> Result<(), BirdError> {
        // Readable by BIRD, which Debian runs as its own user.
        files::replace(&self.routes_file, render(routes).as_bytes(), Some(0o644)).map_err(
            |source| BirdError::Write {
                path: self.routes_file.display().to_string(),
                source,
            },
        )?;
        self.configure().await
    }

    async fn configure(&self) -> Result<(), BirdError> {
        let control = |source| BirdError::Control {
            socket: self.socket.display().to_string(),
            source,
        };
        let client = birdc::Client::for_unix_socket(&self.socket);
        let mut connection = client.connect().await.map_err(control)?;
        let replies = connection
            .send_request("configure")
            .await
            .map_err(control)?;
        use birdc::Message;
        let refusal = replies.iter().find_map(|reply| match reply {
            Message::ConfigurationFileError(m) | Message::RuntimeError(_, m) => Some(m.clone()),
            Message::ParseError(m) | Message::ClientError(_, m) => Some(m.clone()),
            Message::ReconfigurationIgnoredShutdown(m) => Some(m.clone()),
            _ => None,
        });
        match refusal {
            Some(message) => Err(BirdError::Refused {
                path: self.routes_file.display().to_string(),
                message: message.trim().to_string(),
            }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_host_routes_in_their_familys_protocol() {
        let routes: BTreeSet<IpAddr> = ["10.0.0.100", "2001:db8::100", "10.0.0.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let text = render(&routes);
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "protocol static sluice4 {",
                "  ipv4;",
                "  route 10.0.0.7/32 blackhole;",
                "  route 10.0.0.100/32 blackhole;",
                "}",
                "protocol static sluice6 {",
                "  ipv6;",
                "  route 2001:db8::100/128 blackhole;",
                "}",
            ]
        );
    }

    #[test]
    fn nothing_to_announce_keeps_both_protocols() {
        // bird.conf's export filters name them: they must exist, empty.
        let text = render(&BTreeSet::new());
        assert!(text.contains("protocol static sluice4 {\n  ipv4;\n}\n"));
        assert!(text.contains("protocol static sluice6 {\n  ipv6;\n}\n"));
    }

    #[test]
    fn a_routes_file_that_cannot_be_written_is_refused_at_start() {
        let bird = |path: &str| Bird {
            socket: "/run/bird/bird.ctl".into(),
            routes_file: path.into(),
        };
        let e = bird("/nonexistent/dir/sluice.conf").check().unwrap_err();
        assert_eq!(
            e.to_string(),
            "--bird-routes /nonexistent/dir/sluice.conf: its directory /nonexistent/dir does not exist (the file is BIRD's to include: put it next to bird.conf)"
        );
        let e = bird("/tmp").check().unwrap_err();
        assert!(e.to_string().contains("is not a regular file"), "{e}");
        bird("/tmp/sluice-not-there.conf").check().unwrap();
    }

    #[test]
    fn the_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("sluice-bird-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sluice.conf");
        files::replace(&path, b"one", Some(0o644)).unwrap();
        files::replace(&path, b"two", Some(0o644)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file stays behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
