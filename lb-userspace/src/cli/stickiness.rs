//! `sluice stickiness rotate-key`: a fresh key for stickiness cookies in the key file, the
//! previous one kept so that cookies clients hold stay valid. Works on the file alone (no
//! daemon needed, so it can be run once and the file copied to every node); a reload makes a
//! running daemon take it up.

use std::path::PathBuf;

use anyhow::Context;
use sluice::proxy::cookie_keys::{self, CookieKeys};

#[derive(clap::Args)]
pub struct StickinessArgs {
    #[command(subcommand)]
    command: StickinessCommand,
}

#[derive(clap::Subcommand)]
enum StickinessCommand {
    /// Put a fresh signing key first in the key file, keeping the previous one for verifying.
    RotateKey {
        /// The key file `sluice run --stickiness-keys` reads (made if missing).
        #[arg(long, value_name = "FILE", default_value = cookie_keys::DEFAULT_KEY_FILE)]
        key_file: PathBuf,
    },
}

pub fn stickiness(args: StickinessArgs) -> anyhow::Result<()> {
    match args.command {
        StickinessCommand::RotateKey { key_file } => {
            CookieKeys::rotate_file(&key_file).context("rotating the stickiness key")?;
            println!(
                "stickiness key rotated in {}: new cookies get the new key; cookies signed with the previous one stay valid",
                key_file.display()
            );
            println!("  run `sluice reload` (on every node sharing the file) to take it up");
            Ok(())
        }
    }
}
