//! `sluice check`: validates a configuration file as `sluice run` and a reload would, without
//! loading or attaching anything (`nginx -t`, `haproxy -c`). The checks are the daemon's own
//! ([`daemon::check`]), in its order, so a refusal is the sentence the daemon would say; what
//! only the daemon's privileges or its running state decide is a note. Needs no root.

use std::path::PathBuf;

use sluice::{
    daemon::check::{self, Capacity},
    dataplane::interface,
    model::Model,
    proxy::cookie_keys,
};

#[derive(clap::Args)]
pub struct CheckArgs {
    /// The model to check, as `sluice run --config` takes it.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// An interface `sluice run --iface` will be given: it must exist. Repeat for several.
    #[arg(long = "iface", value_name = "IF")]
    ifaces: Vec<String>,
    /// The stickiness key file `sluice run --stickiness-keys` will use: read if it exists.
    #[arg(long, value_name = "FILE", default_value = cookie_keys::DEFAULT_KEY_FILE)]
    stickiness_keys: PathBuf,
    /// `sluice run --max-listeners`, as the daemon will be started.
    #[arg(long, value_name = "N", default_value_t = lb_common::listener::MAX_LISTENERS,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    max_listeners: u32,
    /// `sluice run --max-targets`, as the daemon will be started.
    #[arg(long, value_name = "N", default_value_t = lb_common::target::MAX_TARGETS,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_targets: u32,
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    // The order of `sluice run`: interfaces, the model, then what applying it needs.
    for iface in &args.ifaces {
        interface::index(iface)?;
    }
    let model = Model::load(&args.config)?;
    let capacity = Capacity {
        listeners: args.max_listeners,
        targets: args.max_targets,
    };
    let notes = check::check(&model, &args.stickiness_keys, capacity)?;
    for note in &notes {
        eprintln!("note: {note} (not checked for sure here: the running daemon, or root, decides)");
    }
    let targets: usize = model.target_groups.iter().map(|g| g.targets.len()).sum();
    println!(
        "{}: valid ({} listener(s), {} target group(s), {targets} target(s))",
        args.config.display(),
        model.listeners.len(),
        model.target_groups.len(),
    );
    Ok(())
}
