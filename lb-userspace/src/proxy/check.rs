//! What [`Proxy::stage`](super::Proxy::stage) would refuse in a model, found without serving
//! it (`sluice check`): the same certificate reading ([`super::listener_tls`]), the stickiness
//! key file read as the daemon reads it, access logs opened as the daemon opens them (but not
//! created), and each address bound with the daemon's own [`super::listen`] and closed again.
//!
//! Some answers depend on who asks and when, not on the model: a user other than root may not
//! read a key root can, or bind a port below 1024; and the running daemon holds its own
//! addresses, so a check before a reload finds them in use. Those come back as notes, not
//! refusals.

use std::{collections::BTreeSet, io, net::SocketAddr, path::Path};

use super::{cookie_keys::CookieKeys, listen, listener_tls, ProxyError};
use crate::model::{files, Model};

/// Refuses what the daemon would refuse; returns what could not be known for sure.
pub fn check(model: &Model, key_file: &Path) -> Result<Vec<ProxyError>, ProxyError> {
    let mut notes = Vec::new();
    note_or_refuse(&mut notes, listener_tls(model, None).map(drop))?;
    let l7: Vec<_> = model
        .listeners
        .iter()
        .filter(|l| l.protocol.is_l7())
        .collect();
    let sticky = !l7.is_empty() && model.target_groups.iter().any(|g| g.stickiness.is_some());
    // A missing key file is made by the daemon; an existing one must be readable.
    if sticky && key_file.exists() {
        note_or_refuse(
            &mut notes,
            CookieKeys::load_or_create(key_file)
                .map(drop)
                .map_err(Into::into),
        )?;
    }
    for listener in &l7 {
        let Some(path) = &listener.access_log else {
            continue;
        };
        let opened = if path.exists() {
            files::open_append_regular(path).map(drop)
        } else {
            // The daemon creates it, in a directory that must exist.
            match path.parent().filter(|d| !d.as_os_str().is_empty()) {
                Some(dir) if !dir.is_dir() => Err(io::Error::from_raw_os_error(libc::ENOENT)),
                _ => Ok(()),
            }
        };
        note_or_refuse(
            &mut notes,
            opened.map_err(|source| ProxyError::AccessLog {
                name: listener.name.clone(),
                path: path.clone(),
                source,
            }),
        )?;
    }
    let mut tried = BTreeSet::new();
    for listener in &l7 {
        let addr = SocketAddr::new(listener.address, listener.port);
        if !tried.insert(addr) {
            continue;
        }
        let bound = listen(addr, 1)
            .map(drop)
            .map_err(|source| ProxyError::Bind {
                name: listener.name.clone(),
                addr,
                source,
            });
        match bound {
            // Perhaps by the running daemon itself, whose reload keeps its socket.
            Err(e) if in_use(&e) => notes.push(e),
            other => note_or_refuse(&mut notes, other)?,
        }
    }
    Ok(notes)
}

/// Keeps a refusal that only lack of privilege caused as a note.
fn note_or_refuse(
    notes: &mut Vec<ProxyError>,
    result: Result<(), ProxyError>,
) -> Result<(), ProxyError> {
    match result {
        Err(e) if depends_on_who_asks(&e) => {
            notes.push(e);
            Ok(())
        }
        other => other,
    }
}

fn io_cause(e: &ProxyError) -> Option<&io::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>() {
            return Some(io);
        }
        cause = error.source();
    }
    None
}

fn in_use(e: &ProxyError) -> bool {
    io_cause(e).is_some_and(|io| io.kind() == io::ErrorKind::AddrInUse)
}

/// Refused for lack of privilege, to a user who is not root (the daemon runs as root).
fn depends_on_who_asks(e: &ProxyError) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    !root && io_cause(e).is_some_and(|io| io.kind() == io::ErrorKind::PermissionDenied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        Model::parse(text, "sluice.toml").unwrap()
    }

    fn http_on(port: u16, extra: &str) -> String {
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"http\"\ndefault_target_group = \"web\"\n{extra}\n\
             [[target_group]]\nname = \"web\"\ntargets = [ {{ address = \"127.0.0.2\", port = 8080 }} ]\n"
        )
    }

    #[test]
    fn an_address_in_use_is_a_note_not_a_refusal() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let notes = check(&model(&http_on(port, "")), Path::new("/nonexistent")).unwrap();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(in_use(&notes[0]), "{}", notes[0]);
        // Free again once checked: the check's socket is closed.
        drop(held);
        assert!(check(&model(&http_on(port, "")), Path::new("/nonexistent"))
            .unwrap()
            .is_empty());
    }

    fn free_port() -> u16 {
        let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        socket.local_addr().unwrap().port()
    }

    #[test]
    fn an_access_log_in_a_missing_directory_is_refused_as_the_daemon_refuses_it() {
        let text = http_on(
            free_port(),
            "access_log = \"/nonexistent-sluice-dir/access.log\"",
        );
        let e = check(&model(&text), Path::new("/nonexistent")).unwrap_err();
        let daemon = files::open_append_regular(Path::new("/nonexistent-sluice-dir/access.log"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("listener 'web': cannot open access_log /nonexistent-sluice-dir/access.log: {daemon}")
        );
        assert!(!Path::new("/nonexistent-sluice-dir").exists());
    }

    #[test]
    fn an_access_log_that_does_not_exist_yet_is_not_created() {
        let dir = std::env::temp_dir().join(format!("sluice-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("access.log");
        let text = http_on(free_port(), &format!("access_log = \"{}\"", log.display()));
        let notes = check(&model(&text), Path::new("/nonexistent")).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert!(!log.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
