//! Builds the XDP program (`lb-ebpf`) for `bpfel-unknown-none` with the nightly toolchain and
//! puts it in `OUT_DIR/sluice-xdp`, where `src/dataplane/load.rs` embeds it.
//!
//! Without the eBPF toolchain (nightly `rust-src` and `bpf-linker`, installed by
//! `cargo xtask build`), an empty object is embedded and a warning printed, so that plain
//! `cargo build` / `cargo test` keep working for userspace-only work; such a `sluice` refuses
//! to load with a sentence saying how to build it properly. `SLUICE_REQUIRE_EBPF=1` (set by
//! xtask) turns the missing toolchain into a build error instead.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

const OBJECT_NAME: &str = "sluice-xdp";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let ebpf_dir = manifest_dir.join("../lb-ebpf");
    let common_dir = manifest_dir.join("../lb-common");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let object = out_dir.join(OBJECT_NAME);

    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!("cargo:rerun-if-env-changed=SLUICE_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");

    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("rust-toolchain.toml").display()
    );
    let required = env::var("SLUICE_REQUIRE_EBPF").is_ok_and(|v| v == "1");
    let nightly = pinned_nightly(&ebpf_dir);
    if let Err(missing) = toolchain_present(&nightly) {
        if required {
            panic!(
                "cannot build the XDP program: {missing}; run `cargo xtask build` to install it"
            );
        }
        println!(
            "cargo:warning=XDP program not built ({missing}); this sluice cannot load it. \
             Run `cargo xtask build` to install the eBPF toolchain and build everything."
        );
        fs::write(&object, b"").unwrap();
        return;
    }

    let debug_build = env::var("PROFILE").is_ok_and(|p| p == "debug");
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", &nightly, "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        // Cargo reads .cargo/config.toml from the working directory, so run from lb-ebpf.
        .current_dir(&ebpf_dir);
    if debug_build {
        cmd.args(["--features", "debug-log"]);
    }
    // BTF for maps and programs comes from debug info via bpf-linker --btf.
    let rustflags: OsString = [
        "--cfg=bpf_target_arch=\"x86_64\"",
        "-Cdebuginfo=2",
        "-Clink-arg=--btf",
    ]
    .join("\x1f")
    .into();
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer build's compiler and wrappers belong to the stable toolchain.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("failed to run `rustup run {nightly} cargo build` for lb-ebpf: {e}")
    });
    assert!(
        status.success(),
        "building the XDP program (lb-ebpf) failed: {status}"
    );

    let built = target_dir
        .join("bpfel-unknown-none/release")
        .join(OBJECT_NAME);
    fs::copy(&built, &object)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", built.display(), object.display()));
}

/// The toolchain `lb-ebpf/rust-toolchain.toml` pins (made by `cargo xtask setup`).
fn pinned_nightly(ebpf_dir: &Path) -> String {
    let path = ebpf_dir.join("rust-toolchain.toml");
    let text =
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .find_map(|line| {
            let value = line
                .trim()
                .strip_prefix("channel")?
                .trim()
                .strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_string())
        })
        .unwrap_or_else(|| panic!("{} names no channel", path.display()))
}

/// Checks for the pinned nightly, its `rust-src`, and `bpf-linker` on `PATH`.
fn toolchain_present(nightly: &str) -> Result<(), String> {
    let sysroot = Command::new("rustup")
        .args(["run", nightly, "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !sysroot.status.success() {
        return Err(format!(
            "the pinned nightly {nightly} is not set up (`cargo xtask setup` links it)"
        ));
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err(format!("the nightly {nightly} has no rust-src component"));
    }
    let on_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| is_executable(&d.join("bpf-linker"))))
        .unwrap_or(false);
    if !on_path {
        return Err("bpf-linker is not on PATH".into());
    }
    Ok(())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
