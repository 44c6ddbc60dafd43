//! `sluice reload`: the daemon re-reads its configuration file, as on SIGHUP. Changes made
//! with `sluice target` and `sluice listener` are dropped; a file that does not validate is
//! refused and changes nothing.

use hyper::Method;
use sluice::{api, controller::Changes};

use super::SocketArg;

#[derive(clap::Args)]
pub struct ReloadArgs {
    #[command(flatten)]
    socket: SocketArg,
}

pub fn reload(args: ReloadArgs) -> anyhow::Result<()> {
    let answer = super::ask(
        &args.socket.socket,
        Method::POST,
        api::RELOAD_PATH,
        None::<&()>,
    )?;
    let changes: Changes = serde_json::from_slice(&answer)?;
    println!("reloaded the configuration file");
    print!("{}", super::describe(&changes));
    Ok(())
}
