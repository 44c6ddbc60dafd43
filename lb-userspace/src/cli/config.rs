//! `sluice config show`: the running daemon's model as TOML (`GET /v1/config`), run-time
//! changes included; `--save` writes it over the daemon's configuration file in one step, so
//! that a reload keeps those changes.

use std::path::Path;

use anyhow::Context;
use hyper::Method;
use sluice::{
    api::{self, RunningConfig},
    model::{files, Model},
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

/// Replaces the configuration file in one step (see [`files::replace`]); a missing file is
/// named, not created.
fn replace_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    files::replace(path, contents, None)
        .with_context(|| format!("cannot replace {}; it is unchanged", path.display()))
}

#[cfg(test)]
mod tests {
    use std::{
        fs,
        os::unix::fs::{MetadataExt, PermissionsExt},
        path::PathBuf,
    };

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
