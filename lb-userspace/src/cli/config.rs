//! `sluice config show`: the running daemon's model as TOML (`GET /v1/config`), run-time
//! changes included; `--save` writes it over the daemon's configuration file in one step, so
//! that a reload keeps those changes.

use std::{
    fs,
    io::Write,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::Path,
};

use anyhow::Context;
use hyper::Method;
use sluice::{
    api::{self, RunningConfig},
    model::Model,
};

use super::SocketArg;

#[derive(clap::Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(clap::Subcommand)]
enum ConfigCommand {
    /// Print the running model as TOML (comments and key order of the file are not kept).
    Show(ShowArgs),
}

#[derive(clap::Args)]
struct ShowArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Write it over the daemon's configuration file (`sluice run --config`) instead, in one
    /// step (a new file renamed over it, with the old one's mode and owner).
    #[arg(long)]
    save: bool,
}

pub fn config(args: ConfigArgs) -> anyhow::Result<()> {
    match args.command {
        ConfigCommand::Show(args) => show(args),
    }
}

fn show(args: ShowArgs) -> anyhow::Result<()> {
    let answer = super::ask(
        &args.socket.socket,
        Method::GET,
        api::CONFIG_PATH,
        None::<&()>,
    )?;
    let running: RunningConfig = serde_json::from_slice(&answer)
        .context("the daemon's answer is not the configuration this sluice expects")?;
    if !args.save {
        print!("{}", running.toml);
        return Ok(());
    }
    let Some(file) = running.file else {
        anyhow::bail!("the daemon was started without --config: there is no file to save to; redirect `sluice config show` to a file instead");
    };
    // What is written must be what the daemon would read back.
    Model::parse(&running.toml, &file.display().to_string())
        .context("the daemon's model does not read back; nothing was saved")?;
    replace_file(&file, running.toml.as_bytes())?;
    println!(
        "saved the running model to {} (its comments are not kept)",
        file.display()
    );
    Ok(())
}

/// Replaces `path` with `contents` in one step: a temporary file in the same directory, with
/// the mode and owner of the file it replaces, written and synced, then renamed over it. A
/// symbolic link is followed, so the file it names is replaced and the link stays.
fn replace_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let path = fs::canonicalize(path).with_context(|| format!("cannot find {}", path.display()))?;
    let meta = fs::metadata(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temp = dir.join(format!(".{name}.sluice-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        // The owner first: chown clears set-id bits, which the mode then restores.
        std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()))?;
        file.set_permissions(fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        // The rename itself is durable once the directory is.
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(e).with_context(|| {
            format!(
                "cannot replace {} (through {}); it is unchanged",
                path.display(),
                temp.display()
            )
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn a_replaced_file_keeps_its_mode_and_links_keep_pointing_at_it() {
        let dir = std::env::temp_dir().join(format!("sluice-save-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sluice.toml");
        fs::write(&file, "old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        replace_file(&link, b"new").unwrap();
        assert_eq!(fs::read_to_string(&file).unwrap(), "new");
        assert_eq!(fs::metadata(&file).unwrap().mode() & 0o7777, 0o640);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        let left: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_named_and_not_created() {
        let missing = std::env::temp_dir().join(format!("sluice-none-{}.toml", std::process::id()));
        let e = replace_file(&missing, b"x").unwrap_err();
        assert!(
            format!("{e:#}").contains(&missing.display().to_string()),
            "{e:#}"
        );
        assert!(!missing.exists());
    }
}
