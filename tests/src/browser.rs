//! Headless Chromium (Debian's `chromium`, which `cargo xtask setup` installs) inside a test
//! namespace: loads a page, runs its scripts, and gives the DOM or a screenshot. Its profile
//! lives in a scratch directory removed on drop.

use std::{path::PathBuf, time::Duration};

use crate::netns::Namespace;

/// A cold start on a busy machine takes seconds; bounded all the same.
const TIMEOUT: Duration = Duration::from_secs(90);

pub struct Browser<'a> {
    ns: &'a Namespace,
    profile: PathBuf,
}

impl<'a> Browser<'a> {
    pub fn new(ns: &'a Namespace) -> Browser<'a> {
        let profile = std::env::temp_dir().join(format!("{}-chromium", ns.name()));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).unwrap();
        Browser { ns, profile }
    }

    /// The DOM of `url` once its scripts ran and their first fetches completed (5 s of
    /// virtual time).
    pub fn dump_dom(&self, url: &str) -> String {
        self.run(url, &["--dump-dom".to_string()])
    }

    /// A PNG of `url` at `width` x `height`.
    pub fn screenshot(&self, url: &str, width: u32, height: u32) -> Vec<u8> {
        let shot = self.profile.join("screenshot.png");
        self.run(
            url,
            &[
                format!("--screenshot={}", shot.display()),
                format!("--window-size={width},{height}"),
            ],
        );
        std::fs::read(&shot).unwrap()
    }

    fn run(&self, url: &str, extra: &[String]) -> String {
        let mut cmd = self.ns.command("chromium");
        cmd.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Scripts run and the first fetch completes within this much virtual time.
            "--virtual-time-budget=5000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            self.profile.join("profile").display()
        ))
        .args(extra)
        .arg(url);
        let mut browser = self.ns.spawn(cmd);
        let status = browser.wait_timeout(TIMEOUT);
        assert!(
            status.success(),
            "chromium {extra:?} ({status}; Debian's chromium, which cargo xtask setup installs): {}",
            browser.stderr()
        );
        browser.stdout()
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
