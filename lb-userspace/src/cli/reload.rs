//! `sluice reload`: the daemon re-reads its configuration file, as on SIGHUP. Changes made
//! with `sluice target` and `sluice listener` are dropped; a file that does not validate is
//! refused and changes nothing, and so is a file without listeners while listeners run,
//! unless `--allow-empty`.

use hyper::Method;
use sluice::{api, controller::Changes};

use super::SocketArg;

#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Apply the file even if it has no listeners while the running model has some: every
    /// listener and target is removed (without it, such a file is refused, as on SIGHUP).
    #[arg(long)]
    allow_empty: bool,
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let answer = super::ask(
        &args.socket.socket,
        Method::POST,
        api::RELOAD_PATH,
        Some(&api::server::ReloadOptions {
            allow_empty: args.allow_empty,
        }),
    )?;
    let changes: Changes = serde_json::from_slice(&answer)?;
    println!("reloaded the configuration file");
    print!("{}", super::describe(&changes));
    Ok(())
}
