//! `cargo xtask`: set-up, build, run, test and demo for sluice.

mod bench;
mod cmd;
mod demo;
mod demo_nodes;
mod package;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::cmd::{cargo, run};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer tasks for sluice")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain, the Debian packages and the npm packages the tests use
    /// (idempotent).
    Setup,
    /// Build `sluice` (with its XDP program embedded).
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build `sluice` in release mode and run it as root with the given arguments,
    /// e.g. `cargo xtask run -- run --iface eth0`.
    Run {
        /// Use a debug build (per-packet debug logging in the XDP program).
        #[arg(long)]
        debug: bool,
        /// Arguments for `sluice`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Formatting and clippy checks, userspace and the eBPF crate.
    Lint,
    /// Lint, unit tests, then the root integration tests.
    Test {
        /// Skip formatting and clippy checks.
        #[arg(long)]
        no_lint: bool,
        /// Only run tests whose name contains this filter (passed to the test binaries).
        filter: Option<String>,
    },
    /// Run the demo topology in network namespaces: a client, sluice, three backends.
    Demo(demo::DemoArgs),
    /// Benchmarks in network namespaces: writes bench/results.json, docs/BENCHMARKS.md and
    /// docs/bench.svg.
    Bench(bench::BenchArgs),
    /// Build the Debian package (target/debian/sluice_VERSION_ARCH.deb): binary, systemd
    /// unit, completions, man page, licences and an example configuration.
    Package(package::PackageArgs),
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => {
            setup::build_tools()?;
            setup::debian_packages(setup::TEST_PACKAGES)?;
            setup::socketio_packages(workspace_root())
        }
        Task::Build { release } => build(release).map(|_| ()),
        Task::Run { debug, args } => {
            let sluice = build(!debug)?;
            let mut cmd = if is_root() {
                Command::new(&sluice)
            } else {
                let mut sudo = Command::new("sudo");
                sudo.arg(&sluice);
                sudo
            };
            run(cmd.args(&args))
        }
        Task::Lint => lint(),
        Task::Test { no_lint, filter } => test(!no_lint, filter.as_deref()),
        Task::Demo(args) => {
            setup::debian_packages(setup::TEST_PACKAGES)?;
            let sluice = build(true)?;
            demo::demo(&sluice, args)
        }
        Task::Package(args) => {
            let sluice = match args.sluice {
                Some(path) => path,
                None => build(true)?,
            };
            let out = args.out.unwrap_or_else(|| target_dir().join("debian"));
            std::fs::create_dir_all(&out)?;
            let deb = package::package(&sluice, &out, workspace_root())?;
            println!("{}", deb.display());
            Ok(())
        }
        Task::Bench(args) if bench::is_render(&args) => bench::render(&args),
        Task::Bench(args) => {
            // The bench installs the Debian packages its scenarios need.
            let sluice = build(true)?;
            bench::bench(&sluice, args)
        }
    }
}

/// Builds `sluice` and returns the binary's path.
fn build(release: bool) -> anyhow::Result<PathBuf> {
    setup::build_tools()?;
    let mut args = vec!["build", "--package", "lb-userspace", "--bin", "sluice"];
    if release {
        args.push("--release");
    }
    run(&mut cargo(&args))?;
    Ok(target_dir()
        .join(if release { "release" } else { "debug" })
        .join("sluice"))
}

fn lint() -> anyhow::Result<()> {
    setup::build_tools()?;
    run(&mut cargo(&["fmt", "--all", "--check"]))?;
    run(&mut cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The eBPF crate is its own workspace built with nightly for bpfel-unknown-none
    // (lb-ebpf/.cargo/config.toml sets the target and build-std).
    let ebpf_dir = workspace_root().join("lb-ebpf");
    let nightly = setup::PinnedNightly::read(workspace_root())?.name;
    run(Command::new("rustup")
        .args(["run", &nightly, "cargo", "fmt", "--check"])
        .current_dir(&ebpf_dir)
        .env_remove("RUSTUP_TOOLCHAIN"))?;
    run(Command::new("rustup")
        .args([
            "run",
            &nightly,
            "cargo",
            "clippy",
            "--release",
            "--locked",
            "--",
            "-D",
            "warnings",
        ])
        .current_dir(&ebpf_dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))
}

fn test(with_lint: bool, filter: Option<&str>) -> anyhow::Result<()> {
    setup::build_tools()?;
    setup::debian_packages(setup::TEST_PACKAGES)?;
    setup::socketio_packages(workspace_root())?;
    if with_lint {
        lint()?;
    }
    // The integration tests run the `sluice` binary, so build it first.
    run(&mut cargo(&[
        "build",
        "--package",
        "lb-userspace",
        "--bin",
        "sluice",
    ]))?;
    let mut unit = vec!["test", "--workspace", "--exclude", "sluice-tests"];
    let mut integration = vec!["test", "--package", "sluice-tests"];
    if let Some(filter) = filter {
        unit.extend(["--", filter]);
        integration.extend(["--", filter]);
    }
    run(&mut cargo(&unit)).context("unit tests failed")?;
    if !is_root() {
        anyhow::bail!("the integration tests need root (network namespaces, XDP): run `sudo -E cargo xtask test`");
    }
    if filter.is_none() {
        // The README's main command must keep working: a short demo run, checked. (Before the
        // integration tests, so that the test runner's summary closes the output.)
        let sluice = build(true)?;
        demo::demo(&sluice, demo::DemoArgs::smoke()).context("the demo smoke run failed")?;
        demo::demo(&sluice, demo::DemoArgs::smoke_nodes())
            .context("the demo smoke run with three nodes (cargo xtask demo --nodes 3) failed")?;
        // ... and so must the benchmark: a quick run into a temporary directory, checked for
        // scenarios that could not run (never for figures).
        let out = std::env::temp_dir().join(format!("sluice-bench-smoke-{}", std::process::id()));
        let smoke = bench::bench(&sluice, bench::BenchArgs::smoke(out.clone()))
            .and_then(|()| bench::check_smoke(&out));
        let _ = std::fs::remove_dir_all(&out);
        smoke.context("the benchmark smoke run (cargo xtask bench --quick) failed")?;
    }
    run(&mut cargo(&integration)).context("integration tests failed")
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
