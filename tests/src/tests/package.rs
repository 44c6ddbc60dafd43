//! The Debian package (`cargo xtask package`): built from the test build of `sluice`, it holds
//! the binary, the systemd unit, completions, the man page, the licences and the example
//! configuration; unpacked into a fresh root, its binary runs and passes its own example, and
//! systemd accepts its unit.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use crate::netns::{require_root, sluice_binary, Namespace};

/// What the package must install besides the man pages, and nothing else (directories aside).
const FILES: &[&str] = &[
    "/etc/default/sluice",
    "/etc/sluice/sluice.toml",
    "/usr/bin/sluice",
    "/usr/lib/systemd/system/sluice.service",
    "/usr/share/bash-completion/completions/sluice",
    "/usr/share/doc/sluice/LICENSE-APACHE",
    "/usr/share/doc/sluice/LICENSE-MIT",
    "/usr/share/doc/sluice/copyright",
    "/usr/share/doc/sluice/examples/sluice.toml",
    "/usr/share/fish/vendor_completions.d/sluice.fish",
    "/usr/share/zsh/vendor-completions/_sluice",
];

/// `target/<profile>/xtask`, built by `cargo xtask test` before the tests run.
fn xtask_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let mut dir = exe.parent().unwrap();
    if dir.ends_with("deps") {
        dir = dir.parent().unwrap();
    }
    let xtask = dir.join("xtask");
    assert!(
        xtask.is_file(),
        "{} is missing: run the tests with `cargo xtask test`",
        xtask.display()
    );
    xtask
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn stdout(cmd: &mut Command) -> String {
    let output = cmd.output().unwrap();
    assert!(output.status.success(), "{cmd:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_package_installs_a_working_sluice_with_unit_completions_man_page_and_licences() {
    require_root();
    let work = TempDir(std::env::temp_dir().join(format!("sluice-package-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    std::fs::create_dir_all(&work.0).unwrap();
    let built = stdout(
        Command::new(xtask_binary())
            .args(["package", "--sluice"])
            .arg(sluice_binary())
            .arg("--out")
            .arg(&work.0),
    );
    let deb = PathBuf::from(built.trim());
    let version = stdout(Command::new(sluice_binary()).arg("--version"));
    let version = version.trim().strip_prefix("sluice ").unwrap();
    assert!(
        deb.ends_with(format!("sluice_{version}_amd64.deb"))
            || deb
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("sluice_{version}_")),
        "{}",
        deb.display()
    );

    // Contents: exactly the files above, owned by root.
    let listing = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let files: BTreeSet<String> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            assert!(l.contains(" root/root "), "{l}");
            l.rsplit(' ')
                .next()
                .unwrap()
                .trim_start_matches('.')
                .to_string()
        })
        .collect();
    let (pages, others): (BTreeSet<String>, BTreeSet<String>) = files
        .into_iter()
        .partition(|f| f.starts_with("/usr/share/man/man1/"));
    let expected: BTreeSet<String> = FILES.iter().map(ToString::to_string).collect();
    assert_eq!(others, expected);
    assert!(
        pages.contains("/usr/share/man/man1/sluice.1.gz"),
        "{pages:?}"
    );
    let field = |name: &str| {
        stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "sluice");
    assert_eq!(field("Version"), version);
    let control = TempDir(work.0.join("control"));
    stdout(
        Command::new("dpkg-deb")
            .arg("--control")
            .arg(&deb)
            .arg(&control.0),
    );
    assert_eq!(
        std::fs::read_to_string(control.0.join("conffiles")).unwrap(),
        "/etc/default/sluice\n/etc/sluice/sluice.toml\n"
    );

    // Unpacked into a fresh root: the binary runs and passes its own example.
    let root = work.0.join("root");
    stdout(
        Command::new("dpkg-deb")
            .arg("--extract")
            .arg(&deb)
            .arg(&root),
    );
    let installed = root.join("usr/bin/sluice");
    assert_eq!(
        stdout(Command::new(&installed).arg("--version")).trim(),
        format!("sluice {version}")
    );
    let ns = Namespace::new("pkg");
    let checked = ns
        .command(&installed)
        .args(["check", "--config"])
        .arg(root.join("etc/sluice/sluice.toml"))
        .output()
        .unwrap();
    assert!(checked.status.success(), "{checked:?}");
    assert_eq!(
        std::fs::read(root.join("etc/sluice/sluice.toml")).unwrap(),
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sluice.toml")).unwrap()
    );
    // Every page a page refers to is there: sluice(1) lists sluice-run(1), and so on.
    let man = root.join("usr/share/man/man1");
    let main = gunzip(&man.join("sluice.1.gz"));
    assert!(main.contains(".TH sluice 1"), "{main}");
    for subcommand in ["run", "check", "config", "reload", "completions"] {
        assert!(
            main.contains(&format!("sluice\\-{subcommand}(1)")),
            "{subcommand}: {main}"
        );
    }
    for page in &pages {
        let text = gunzip(&root.join(page.trim_start_matches('/')));
        for reference in text.split("sluice\\-").skip(1) {
            let Some((name, _)) = reference.split_once("(1)") else {
                continue;
            };
            // A reference is a page name right before "(1)", not text that runs on to one.
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '-' || c == '\\')
            {
                continue;
            }
            let file = format!("sluice-{}.1.gz", name.replace("\\-", "-"));
            assert!(
                man.join(&file).is_file(),
                "{page} refers to {file}, which is missing"
            );
        }
    }
    assert!(gunzip(&man.join("sluice-config-show.1.gz")).contains("\\-\\-save"));
    let bash =
        std::fs::read_to_string(root.join("usr/share/bash-completion/completions/sluice")).unwrap();
    assert!(
        bash.contains("complete -F _sluice") && bash.contains("check"),
        "{bash}"
    );
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(root.join("usr/share/bash-completion/completions/sluice"))
        .output()
        .unwrap();
    assert!(syntax.status.success(), "bash -n: {syntax:?}");
    let licence =
        std::fs::read_to_string(root.join("usr/share/doc/sluice/LICENSE-APACHE")).unwrap();
    assert!(licence.contains("Apache License"));

    // systemd accepts the unit (with its binary where this root has it); `cargo xtask setup`
    // installs systemd-analyze.
    let unit = std::fs::read_to_string(root.join("usr/lib/systemd/system/sluice.service"))
        .unwrap()
        .replace("/usr/bin/sluice", installed.to_str().unwrap());
    let unit_path = work.0.join("sluice.service");
    std::fs::write(&unit_path, unit).unwrap();
    let verified = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit_path)
        .output()
        .expect("systemd-analyze (Debian's systemd, installed by cargo xtask setup)");
    assert!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// `gzip -dc FILE`.
fn gunzip(path: &Path) -> String {
    let output = Command::new("gzip").arg("-dc").arg(path).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}
