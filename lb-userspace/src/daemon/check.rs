//! `sluice check`: what `sluice run` (and a reload) would refuse in a model, found without
//! the kernel and without serving anything. After the model's own validation
//! ([`Model::load`], which the caller runs as the daemon does), the checks are the daemon's
//! own code in the daemon's order: the L7 proxy's files and addresses
//! ([`proxy::check`](crate::proxy::check)), then the controller's [`Controller::apply`]
//! against an in-memory data plane of the same sizes that asks this host's routes (targets
//! without a route, more listeners or targets than the maps hold, Maglev tables). A refusal is
//! the same error, so its sentence is the same.

use std::{path::Path, time::Instant};

use super::ApplyModelError;
use crate::{
    controller::Controller,
    dataplane::memory::MemoryDataplane,
    model::Model,
    proxy::{self, ProxyError},
};

/// The sizes `sluice run` fixes at load time (`--max-listeners`, `--max-targets`).
#[derive(Clone, Copy, Debug)]
pub struct Capacity {
    pub listeners: u32,
    pub targets: u32,
}

/// Refuses `model` as the daemon would refuse it on start-up or reload; otherwise what could
/// not be known for sure here (see [`proxy::check`](crate::proxy::check)).
pub fn check(
    model: &Model,
    key_file: &Path,
    capacity: Capacity,
) -> Result<Vec<ProxyError>, ApplyModelError> {
    let notes = proxy::check::check(model, key_file)?;
    let dataplane = MemoryDataplane::with_host_routes(capacity.listeners, capacity.targets);
    Controller::new(dataplane).apply(model, Instant::now())?;
    Ok(notes)
}
