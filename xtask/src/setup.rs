//! Installs what building and testing sluice needs, idempotently: the nightly `rust-src`
//! component, `bpf-linker` built against the nightly's own libLLVM, Debian packages, and the
//! npm packages of the socket.io end-to-end test.
//! When everything is in place this costs a few cheap process spawns (well under a second).

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

use crate::cmd::{output, run};

/// Debian packages the tests and the demo use (besides what a fresh machine has).
pub const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "curl",
    // The BGP tests and `demo --nodes`: BIRD 2 for the routers and the nodes.
    "bird2",
    // The status page test loads the page in headless Chromium; the metrics test scrapes with
    // Prometheus and checks with promtool.
    "chromium",
    "prometheus",
    // `systemd-analyze verify` for the packaged unit (nothing is started).
    "systemd",
    // The shared store of several nodes (`sluice run --store etcd://...`): the tests start
    // etcd 3.4 in a namespace and write into it with etcdctl.
    "etcd-server",
    "etcd-client",
];

/// Debian packages building `sluice` needs: `protoc` for etcd-client's gRPC code, and the
/// well-known types it imports (`google/protobuf/descriptor.proto`, ...), which Debian ships
/// apart from the compiler.
pub const BUILD_PACKAGES: &[&str] = &["protobuf-compiler", "libprotobuf-dev"];

/// Everything a build of `sluice` needs: the eBPF toolchain and [`BUILD_PACKAGES`] (so a clean
/// machine with only Rust, cargo and gcc builds).
pub fn build_tools() -> anyhow::Result<()> {
    ebpf_toolchain()?;
    debian_packages(BUILD_PACKAGES)
}

/// What every `cargo xtask bench` run uses; the scenarios add theirs (see `bench::Plan`):
/// nftables, the kernel baseline of the forwarding scenario, and
pub const BENCH_PACKAGES: &[&str] = &["iproute2", "ethtool", "curl"];

/// ... the L7 scenarios' baselines and load generator.
pub const L7_BENCH_PACKAGES: &[&str] = &["nginx", "haproxy", "wrk", "nghttp2-client"];

/// bpf-linker version known to build against LLVM 22 (see shared FACTS).
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Everything needed to build the XDP program: the pinned nightly, its `rust-src`, and
/// bpf-linker built against its libLLVM.
pub fn ebpf_toolchain() -> anyhow::Result<()> {
    let pin = PinnedNightly::read(crate::workspace_root())?;
    let source = pin.ensure_linked()?;
    let sysroot = toolchain_sysroot(&pin.name)?;
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        let Some(source) = source else {
            bail!(
                "{} has no rust-src component, and it is linked from a toolchain rustup did not install; add rust-src to the toolchain at {}",
                pin.name,
                sysroot.display()
            );
        };
        eprintln!("xtask: adding rust-src to {source} (needed for -Z build-std=core)");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &source]))?;
    }
    if !bpf_linker_works() {
        install_bpf_linker(&sysroot)?;
    }
    Ok(())
}

/// The nightly the XDP program is built with, as `lb-ebpf/rust-toolchain.toml` names it:
/// `sluice-nightly-YYYY-MM-DD`, a name `rustup toolchain link` gives to an installed nightly
/// of that date (rustup refuses to link under an official name such as `nightly-2026-05-19`,
/// and cannot download one here).
pub struct PinnedNightly {
    pub name: String,
    /// YYYY-MM-DD: the nightly's commit date (`rustc -vV`).
    pub date: String,
}

const PIN_PREFIX: &str = "sluice-nightly-";

impl PinnedNightly {
    pub fn read(workspace_root: &Path) -> anyhow::Result<PinnedNightly> {
        let path = workspace_root.join("lb-ebpf/rust-toolchain.toml");
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        PinnedNightly::parse(&text).with_context(|| {
            format!(
                "{}: expected channel = \"{PIN_PREFIX}YYYY-MM-DD\"",
                path.display()
            )
        })
    }

    fn parse(text: &str) -> Option<PinnedNightly> {
        let name = text.lines().find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })?;
        let date = name.strip_prefix(PIN_PREFIX)?.to_string();
        let valid = date.len() == 10
            && date.char_indices().all(|(i, c)| {
                if i == 4 || i == 7 {
                    c == '-'
                } else {
                    c.is_ascii_digit()
                }
            });
        valid.then_some(PinnedNightly { name, date })
    }

    /// Makes sure `self.name` runs the nightly of `self.date`, linking it from an installed
    /// one if needed; returns the rustup toolchain it was linked from, when this call or an
    /// earlier one can tell (for adding components). Fast when already done: one `rustc -vV`.
    fn ensure_linked(&self) -> anyhow::Result<Option<String>> {
        let candidates = [format!("nightly-{}", self.date), "nightly".to_string()];
        let linked = commit_date(&self.name);
        if linked.as_deref() == Some(self.date.as_str()) {
            let sysroot = toolchain_sysroot(&self.name)?;
            let source = candidates.into_iter().find(|c| {
                toolchain_sysroot(c)
                    .is_ok_and(|s| fs::canonicalize(&s).ok() == fs::canonicalize(&sysroot).ok())
            });
            return Ok(source);
        }
        let mut found = Vec::new();
        for candidate in &candidates {
            match commit_date(candidate) {
                Some(date) if date == self.date => {
                    let sysroot = toolchain_sysroot(candidate)?;
                    if linked.is_some() {
                        // Linked to another nightly before (an update): link again.
                        run(Command::new("rustup").args(["toolchain", "uninstall", &self.name]))?;
                    }
                    eprintln!(
                        "xtask: linking {} to {candidate} ({}), the nightly the XDP program is pinned to",
                        self.name,
                        sysroot.display()
                    );
                    run(Command::new("rustup")
                        .args(["toolchain", "link", &self.name])
                        .arg(&sysroot))?;
                    return Ok(Some(candidate.clone()));
                }
                Some(date) => found.push(format!("{candidate} is from {date}")),
                None => {}
            }
        }
        let found = if found.is_empty() {
            "no nightly is installed".to_string()
        } else {
            found.join(", ")
        };
        bail!(
            "the XDP program is built with the nightly of {date} ({name} in lb-ebpf/rust-toolchain.toml), but {found}; install it with `rustup toolchain install nightly-{date} --component rust-src` and run `cargo xtask setup` again (it links {name} to it). To move to another nightly, change the date in lb-ebpf/rust-toolchain.toml and check that the eBPF build and tests pass with it.",
            date = self.date,
            name = self.name
        )
    }
}

/// The commit date of a toolchain's rustc (YYYY-MM-DD), if the toolchain runs.
fn commit_date(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        l.strip_prefix("commit-date: ")
            .map(|d| d.trim().to_string())
    })
}

/// Installs missing Debian packages with apt-get (root only).
pub fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !debian_package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::is_root() {
        bail!(
            "missing Debian packages {}; install them with `sudo apt-get install {}` or run xtask as root",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

/// Where the socket.io test's `package.json` and committed `package-lock.json` live.
const SOCKETIO_DIR: &str = "tests/socketio";

/// Installs socket.io and socket.io-client for the end-to-end test with `npm ci`, only when
/// `node_modules` is missing or older than `package-lock.json`.
pub fn socketio_packages(workspace_root: &Path) -> anyhow::Result<()> {
    let dir = workspace_root.join(SOCKETIO_DIR);
    let lock = dir.join("package-lock.json");
    // npm writes this copy of the lock file last, so its time says when an install completed.
    let installed = dir.join("node_modules/.package-lock.json");
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let lock_time = modified(&lock).with_context(|| format!("{} is missing", lock.display()))?;
    if modified(&installed).is_some_and(|t| t >= lock_time) {
        return Ok(());
    }
    eprintln!("xtask: installing the socket.io test's npm packages (npm ci in {SOCKETIO_DIR})");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))
    .context("node and npm are needed for the socket.io test (apt-get install nodejs npm)")
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

fn toolchain_sysroot(toolchain: &str) -> anyhow::Result<PathBuf> {
    let out = output(
        Command::new("rustup")
            .args(["run", toolchain, "rustc", "--print", "sysroot"])
            .env_remove("RUSTUP_TOOLCHAIN"),
    )
    .with_context(|| format!("the toolchain {toolchain} does not run"))?;
    Ok(PathBuf::from(out.trim()))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Builds bpf-linker against the nightly toolchain's own libLLVM: `cargo install bpf-linker`
/// with default features wants a system LLVM (llvm-config) that this machine does not have.
fn install_bpf_linker(sysroot: &Path) -> anyhow::Result<()> {
    let lib_dir = sysroot.join("lib");
    let llvm_lib = fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("libLLVM.so.") && name.contains("-rust-"))
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib_dir.display()))?;
    let major = llvm_lib
        .trim_start_matches("libLLVM.so.")
        .split('.')
        .next()
        .unwrap_or_default()
        .to_string();

    // The linker's rpath points into this prefix, so it must outlive the build: keep it under
    // CARGO_HOME, one prefix per LLVM library so a nightly update gets its own.
    let prefix = cargo_home()?.join("sluice/llvm").join(&llvm_lib);
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)
        .with_context(|| format!("creating {}", prefix_lib.display()))?;
    for link in ["libLLVM.so", llvm_lib.as_str()] {
        let path = prefix_lib.join(link);
        let _ = fs::remove_file(&path);
        symlink(lib_dir.join(&llvm_lib), &path)
            .with_context(|| format!("linking {}", path.display()))?;
    }

    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_lib} (about a minute)"
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{major}"),
        ])
        .env("LLVM_PREFIX", &prefix)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR"))?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not run; is {} on PATH?",
            cargo_home()?.join("bin").display()
        );
    }
    Ok(())
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pin_is_a_dated_sluice_nightly() {
        let pin =
            PinnedNightly::parse("[toolchain]\nchannel = \"sluice-nightly-2026-05-19\"\n").unwrap();
        assert_eq!(
            (pin.name.as_str(), pin.date.as_str()),
            ("sluice-nightly-2026-05-19", "2026-05-19")
        );
        for bad in [
            "channel = \"nightly\"",
            "channel = \"sluice-nightly-2026-5-19\"",
            "components = []",
        ] {
            assert!(PinnedNightly::parse(bad).is_none(), "{bad}");
        }
        // The file in the repository is such a pin.
        PinnedNightly::read(crate::workspace_root()).unwrap();
    }
}
