//! `sluice bench`: an in-kernel traffic generator and the measurements built on it.
//!
//! Pure parts (frames and flows, pacing, report maths, Maglev figures) are apart from the
//! parts that load programs and run them (`programs`, `cost`).

pub mod cost;
pub mod frame;
pub mod maglev;
pub mod pace;
pub mod programs;
pub mod random_read;
pub mod report;
