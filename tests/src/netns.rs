//! Network namespaces for the integration tests and the demo: named namespaces joined by veth
//! pairs or a bridge, processes and threads inside them, and teardown on drop (also while a
//! failing test unwinds).
//!
//! Everything here lives inside namespaces this module created: the root namespace never gets
//! an address or an interface from it, so test traffic cannot leave the machine.
//!
//! Namespaces, pin directories and control sockets are named `sluicet-<pid>-<seq>-...`. The pid lets the first
//! use in a process delete what a crashed earlier run left behind without touching the
//! namespaces of runs that are still alive.

use std::{
    ffi::OsStr,
    fs::{self, File},
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc, Arc, Mutex, Once, Weak,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// The start of every namespace and pin directory name this harness creates.
pub const NAME_PREFIX: &str = "sluicet-";

/// Where `ip netns` keeps the handles of named namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";
/// Where daemons started by tests put their control sockets (`sluice run` creates it).
const SOCKET_DIR: &str = "/run/sluice-tests";
const BPF_FS_MAGIC: i64 = 0xCAFE_4A11;

/// How often bounded waits look again. Short, so waits end soon after their condition holds.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

static NEXT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Panics unless the process runs as root, which namespaces, veths and XDP need.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("sluice's integration tests need root: run `cargo xtask test` as root");
    }
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` after `timeout`.
///
/// The timeout is a failure bound, not a delay: the wait ends as soon as `cond` is true.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The `sluice` binary built next to the running test or xtask executable, or `$SLUICE_BIN`.
pub fn sluice_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SLUICE_BIN={} is not a file; build it first: cargo build -p lb-userspace (or use cargo xtask test)",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the path of the running executable");
    let path = binary_next_to(&exe, "sluice");
    assert!(
        path.is_file(),
        "{} is missing; build it first: cargo build -p lb-userspace (or use cargo xtask test)",
        path.display()
    );
    path
}

/// `target/<profile>/<name>` for an executable in `target/<profile>/` (xtask) or in
/// `target/<profile>/deps/` (test binaries).
fn binary_next_to(exe: &Path, name: &str) -> PathBuf {
    let mut dir = exe.parent().expect("an executable lives in a directory");
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().expect("deps/ has a parent");
    }
    dir.join(name)
}

/// A fresh directory name under the bpffs mount for one `sluice run --pin-dir`. Tests run in
/// parallel, and two daemons must never share a pin directory.
///
/// Mounts bpffs at `/sys/fs/bpf` if nothing is mounted there yet, once per process: daemons
/// started in parallel would otherwise race to mount it, and a second mount stacked on the
/// first hides the pins made below it.
pub fn unique_pin_dir() -> PathBuf {
    clean_stale_once();
    static MOUNT: Once = Once::new();
    MOUNT.call_once(|| {
        let mount_point = Path::new(BPFFS_MOUNT_POINT);
        if !is_bpffs(mount_point) {
            let status = Command::new("mount")
                .args(["-t", "bpf", "bpf", BPFFS_MOUNT_POINT])
                .status()
                .expect("running mount");
            assert!(
                status.success(),
                "mount -t bpf bpf {BPFFS_MOUNT_POINT} failed: {status}"
            );
        }
    });
    Path::new(BPFFS_MOUNT_POINT).join(unique_name("pins"))
}

/// A fresh path for one `sluice run --socket`: tests run in parallel, and a daemon refuses a
/// socket another daemon answers on. Nothing is created; the daemon makes the directory.
pub fn unique_socket_path() -> PathBuf {
    clean_stale_once();
    Path::new(SOCKET_DIR).join(format!("{}.sock", unique_name("api")))
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into `buf`; c_path is NUL-terminated.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

pub fn unique_name(role: &str) -> String {
    let seq = NEXT_SEQ.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{seq}-{role}", std::process::id())
}

/// The pid in a name made by [`unique_name`].
fn owner_pid(name: &str) -> Option<i32> {
    name.strip_prefix(NAME_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// Deletes namespaces, pin directories and control sockets left by harness runs that are no
/// longer alive.
///
/// Runs once, before this process makes its first name, so a name carrying this process's
/// own pid is also stale (an earlier run that had the same pid).
fn clean_stale_once() {
    static CLEAN: Once = Once::new();
    CLEAN.call_once(|| {
        let own_pid = std::process::id() as i32;
        let is_stale =
            |name: &str| owner_pid(name).is_some_and(|pid| pid == own_pid || !process_alive(pid));
        for name in list_namespaces().into_iter().filter(|n| is_stale(n)) {
            if let Err(e) = run_ip(&["netns", "delete", &name]) {
                eprintln!("warning: cannot delete stale namespace {name}: {e}");
            }
        }
        if is_bpffs(Path::new(BPFFS_MOUNT_POINT)) {
            for entry in fs::read_dir(BPFFS_MOUNT_POINT)
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry.file_name().to_str().is_some_and(is_stale) {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        for entry in fs::read_dir(SOCKET_DIR).into_iter().flatten().flatten() {
            if entry.file_name().to_str().is_some_and(is_stale) {
                let _ = fs::remove_file(entry.path());
            }
        }
        for entry in fs::read_dir(std::env::temp_dir())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_str().unwrap_or_default();
            if name.ends_with("-programs") && is_stale(name) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// A copy of `program` in this process's own directory under the temporary directory
/// (mode 0755, the copy 0755), made once per program; stale ones go with
/// [`clean_stale_once`].
fn reachable_copy(program: &Path) -> PathBuf {
    use std::{collections::HashMap, os::unix::fs::PermissionsExt};
    static COPIES: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);
    clean_stale_once();
    let mut copies = COPIES.lock().unwrap();
    let copies = copies.get_or_insert_with(HashMap::new);
    if let Some(copy) = copies.get(program) {
        return copy.clone();
    }
    let dir = std::env::temp_dir().join(unique_name("programs"));
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join(program.file_name().expect("a program file"));
    fs::copy(program, &copy)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", program.display(), copy.display()));
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
    copies.insert(program.to_path_buf(), copy.clone());
    copy
}

fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks whether the process exists.
    unsafe {
        libc::kill(pid, 0) == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

/// The names of all named network namespaces (`ip netns list`), including other people's.
pub fn list_namespaces() -> Vec<String> {
    let mut names: Vec<String> = match fs::read_dir(NETNS_RUN_DIR) {
        Ok(entries) => entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("listing {NETNS_RUN_DIR}: {e}"),
    };
    names.sort();
    names
}

/// Runs `ip ARGS` and returns its stdout, or a message with its stderr.
fn run_ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Somewhere code can run: a [`Namespace`], or [`CurrentNetns`] for loopback-only unit tests
/// that need no root.
pub trait Netns {
    /// Runs `f` on a thread inside the namespace and returns its result; a panic in `f`
    /// continues in the caller. Sockets created in `f` belong to the namespace for good.
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T;
    /// Starts a named thread inside the namespace. Threads it starts stay in the namespace.
    fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T>;
}

/// The calling thread's own network namespace.
#[derive(Clone, Copy, Debug, Default)]
pub struct CurrentNetns;

impl Netns for CurrentNetns {
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        f()
    }

    fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        thread::Builder::new()
            .name(name.to_string())
            .spawn(f)
            .expect("spawning a thread")
    }
}

/// A named network namespace, deleted on drop together with the processes spawned in it.
pub struct Namespace {
    name: String,
    children: Mutex<Vec<Weak<Mutex<ChildState>>>>,
}

impl Namespace {
    /// Creates a uniquely named namespace with `lo` up. `role` (e.g. "client") only makes the
    /// name readable in `ip netns list`.
    pub fn new(role: &str) -> Namespace {
        require_root();
        assert!(
            !role.is_empty()
                && !role.contains(['/', '\0'])
                && !role.chars().any(char::is_whitespace),
            "namespace role {role:?} must be a non-empty word"
        );
        clean_stale_once();
        let name = unique_name(role);
        run_ip(&["netns", "add", &name]).unwrap_or_else(|e| panic!("{e}"));
        let ns = Namespace {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n NAME ARGS` and returns its stdout; panics with its stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        run_ip(&full).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sets a sysctl of this namespace, e.g. `sysctl("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        // /proc/sys/net resolves to the network namespace of the thread that opens it.
        self.run_in(|| fs::write(&path, value))
            .unwrap_or_else(|e| panic!("setting {key}={value} in {}: {e}", self.name));
    }

    /// A command whose process joins this network namespace (and nothing else).
    ///
    /// Unlike `ip netns exec`, the process keeps the caller's mount namespace and `/sys`, so
    /// pins under /sys/fs/bpf are shared with `sluice` commands run elsewhere. The process is
    /// killed when the thread that spawns it exits (`PR_SET_PDEATHSIG`), so a crashed run
    /// leaves no daemon behind: spawn it on a thread that outlives it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.command_inner(program.as_ref(), None)
    }

    /// Like [`command`](Self::command), but the process drops root for `uid`/`gid` after
    /// joining the namespace. (`CommandExt::uid` would drop root before `pre_exec` runs, and
    /// joining a namespace needs root.)
    /// The program is run from a copy in a directory every user may enter: a checkout in a
    /// private directory (root's home is mode 0700) is not reachable for `uid`.
    pub fn command_as(&self, program: impl AsRef<OsStr>, uid: u32, gid: u32) -> Command {
        let copy = reachable_copy(Path::new(program.as_ref()));
        self.command_inner(copy.as_os_str(), Some((uid, gid)))
    }

    fn command_inner(&self, program: &OsStr, user: Option<(u32, u32)>) -> Command {
        let netns = self.open();
        let mut cmd = Command::new(program);
        // SAFETY: the closure only makes async-signal-safe syscalls and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                enter(&netns)?;
                if let Some((uid, gid)) = user {
                    if libc::setgroups(0, std::ptr::null()) != 0
                        || libc::setgid(gid) != 0
                        || libc::setuid(uid) != 0
                    {
                        return Err(io::Error::last_os_error());
                    }
                }
                // After setuid, which clears the parent-death signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Spawns `cmd` with stdin closed and stdout/stderr captured; the process is killed when
    /// the guard or this namespace is dropped, whichever comes first.
    pub fn spawn(&self, mut cmd: Command) -> ChildGuard {
        let what = format!("{:?}", cmd.get_program());
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what} in {}: {e}", self.name));
        let (done_tx, done_rx) = mpsc::channel();
        let stdout = capture(child.stdout.take().expect("piped stdout"), done_tx.clone());
        let stderr = capture(child.stderr.take().expect("piped stderr"), done_tx);
        let state = Arc::new(Mutex::new(ChildState {
            child,
            status: None,
        }));
        let mut children = self.children.lock().unwrap();
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(&state));
        ChildGuard {
            what,
            state,
            stdout,
            stderr,
            readers_done: done_rx,
            readers_left: 2,
        }
    }

    /// Runs `f` on a fresh thread inside this namespace; see [`Netns::run_in`].
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let netns = self.open();
        let name = &self.name;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("in {name}"))
                .spawn_scoped(scope, move || {
                    enter(&netns).unwrap_or_else(|e| panic!("entering namespace {name}: {e}"));
                    f()
                })
                .expect("spawning a thread");
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Starts a thread inside this namespace; see [`Netns::spawn_thread`].
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let netns = self.open();
        let ns_name = self.name.clone();
        thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                enter(&netns).unwrap_or_else(|e| panic!("entering namespace {ns_name}: {e}"));
                drop(netns);
                f()
            })
            .expect("spawning a thread")
    }

    /// Adds an address in CIDR form; IPv6 addresses skip duplicate address detection, so they
    /// are usable at once.
    pub fn add_addr(&self, iface: &str, cidr: &str) {
        if cidr.contains(':') {
            self.ip(&["-6", "addr", "add", cidr, "dev", iface, "nodad"]);
        } else {
            self.ip(&["addr", "add", cidr, "dev", iface]);
        }
    }

    /// Routes everything without a more specific route via `gateway`.
    pub fn add_default_route(&self, gateway: std::net::IpAddr) {
        let family = if gateway.is_ipv6() { "-6" } else { "-4" };
        self.ip(&[
            family,
            "route",
            "add",
            "default",
            "via",
            &gateway.to_string(),
        ]);
    }

    /// The interface's MAC address.
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let out = self.ip(&["-o", "link", "show", "dev", iface]);
        parse_link_mac(&out)
            .unwrap_or_else(|| panic!("no MAC address for {iface} in {}: {out}", self.name))
    }

    /// The XDP attachment `ip link` reports for the interface ("xdp" for native mode,
    /// "xdpgeneric", "xdpoffload", "xdpmulti"), or `None` without a program.
    pub fn xdp_attached(&self, iface: &str) -> Option<String> {
        let out = self.ip(&["-o", "link", "show", "dev", iface]);
        parse_link_xdp(&out)
    }

    /// Runs `ethtool ARGS` inside this namespace, panicking with its stderr on failure.
    pub fn ethtool(&self, args: &[&str]) {
        let output = self
            .command("ethtool")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ethtool (is it installed?): {e}"));
        assert!(
            output.status.success(),
            "`ethtool {}` in {} failed ({}): {}",
            args.join(" "),
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }

    fn open(&self) -> File {
        let path = Path::new(NETNS_RUN_DIR).join(&self.name);
        File::open(&path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()))
    }
}

impl Netns for Namespace {
    fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        Namespace::run_in(self, f)
    }

    fn spawn_thread<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        Namespace::spawn_thread(self, name, f)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let children =
            std::mem::take(&mut *self.children.lock().unwrap_or_else(|p| p.into_inner()));
        for child in children.iter().filter_map(Weak::upgrade) {
            child
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .kill_and_reap();
        }
        // No panic here: this may run while a failing test unwinds, and a second panic aborts.
        if let Err(e) = run_ip(&["netns", "delete", &self.name]) {
            eprintln!("warning: {e}");
        }
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Namespace").field(&self.name).finish()
    }
}

/// Moves the calling thread into the network namespace behind `netns`.
fn enter(netns: &File) -> io::Result<()> {
    // SAFETY: setns only reads the fd; CLONE_NEWNET limits it to the network namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn parse_link_mac(ip_link: &str) -> Option<[u8; 6]> {
    let mut words = ip_link.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    parse_mac(words.next()?)
}

fn parse_link_xdp(ip_link: &str) -> Option<String> {
    // The attachment is a word of the `mtu 1500 xdp qdisc ...` part of the first line.
    ip_link
        .lines()
        .next()?
        .split_whitespace()
        .find(|w| matches!(*w, "xdp" | "xdpgeneric" | "xdpoffload" | "xdpmulti"))
        .map(str::to_string)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Creates a veth pair with `a_if` in `a` and `b_if` in `b`, both up and without checksum
/// offload: packets that sluice rewrites are later checked by real stacks, and with offload a
/// veth leaves checksums unfilled.
pub fn veth(a: &Namespace, a_if: &str, b: &Namespace, b_if: &str) {
    // `name` is needed: a bare first word could parse as an `ip link add` keyword.
    a.ip(&[
        "link",
        "add",
        "name",
        a_if,
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ]);
    for (ns, iface) in [(a, a_if), (b, b_if)] {
        ns.ethtool(&["-K", iface, "tx", "off", "rx", "off"]);
        ns.ip(&["link", "set", iface, "up"]);
    }
}

/// Frames that an XDP program sends back out of (or redirects into) a veth are dropped at the
/// peer unless the peer has an XDP program or GRO; this turns GRO on for such a peer.
///
/// Only for peers: generic-mode XDP runs after GRO, so GRO on the interface sluice is attached
/// to would show the program merged packets.
pub fn accept_xdp_frames(ns: &Namespace, iface: &str) {
    ns.ethtool(&["-K", iface, "gro", "on"]);
}

/// A learning bridge in a namespace of its own, with veth ports into other namespaces.
pub struct Bridge {
    pub ns: Namespace,
    /// The bridge device's name inside `ns`.
    pub name: String,
}

impl Bridge {
    pub fn new(role: &str) -> Bridge {
        let ns = Namespace::new(role);
        let name = "br0".to_string();
        // Without multicast snooping the bridge floods IPv6 neighbour solicitations to all
        // ports, whether or not it has heard MLD reports.
        ns.ip(&[
            "link",
            "add",
            "name",
            &name,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ns.ip(&["link", "set", &name, "up"]);
        Bridge { ns, name }
    }

    /// Connects `other_if` in `other` to the bridge through a port named `port`.
    pub fn connect(&self, port: &str, other: &Namespace, other_if: &str) {
        veth(&self.ns, port, other, other_if);
        self.ns.ip(&["link", "set", port, "master", &self.name]);
    }
}

/// One interface of a topology host, with its addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub iface: String,
    pub mac: [u8; 6],
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

/// A namespace with one interface, like the client or a target.
pub struct Host {
    pub ns: Namespace,
    pub link: Link,
}

/// The standard topology the tests and the demo build on:
///
/// ```text
///  client ── veth ── lb ── veth ── switch (bridge) ─┬─ veth ── target 0
///   (client side: 10.111.0.0/24,  (target side:     ├─ veth ── target 1
///    fd00:5c:0:1::/64)             10.111.1.0/24,   └─ ...
///                                  fd00:5c:0:2::/64)
/// ```
///
/// lb forwards between the sides; client and targets route everything via lb. Addresses are
/// private and exist only inside these namespaces.
pub struct LbTopology {
    pub client: Host,
    pub lb: Namespace,
    /// lb's interface facing the client, where sluice attaches.
    pub lb_client_side: Link,
    /// lb's interface facing the targets.
    pub lb_target_side: Link,
    pub switch: Bridge,
    pub targets: Vec<Host>,
}

impl LbTopology {
    pub const CLIENT_PREFIX_V4: &'static str = "10.111.0.0/24";
    pub const CLIENT_PREFIX_V6: &'static str = "fd00:5c:0:1::/64";
    pub const TARGET_PREFIX_V4: &'static str = "10.111.1.0/24";
    pub const TARGET_PREFIX_V6: &'static str = "fd00:5c:0:2::/64";

    pub fn new(n_targets: usize) -> LbTopology {
        // Target addresses are .10, .11, ... so the count fits the /24.
        assert!(n_targets <= 200, "at most 200 targets, not {n_targets}");
        let client_ns = Namespace::new("client");
        let lb = Namespace::new("lb");
        let switch = Bridge::new("switch");

        veth(&client_ns, "eth0", &lb, "eth0");
        // sluice on lb's eth0 may send frames back to the client.
        accept_xdp_frames(&client_ns, "eth0");
        switch.connect("lb", &lb, "eth1");
        // ... or towards the targets, through lb's eth1 into the switch port.
        accept_xdp_frames(&switch.ns, "lb");

        let lb_client_side = Link::configure(
            &lb,
            "eth0",
            Ipv4Addr::new(10, 111, 0, 1),
            "fd00:5c:0:1::1".parse().unwrap(),
        );
        let lb_target_side = Link::configure(
            &lb,
            "eth1",
            Ipv4Addr::new(10, 111, 1, 1),
            "fd00:5c:0:2::1".parse().unwrap(),
        );
        lb.sysctl("net.ipv4.ip_forward", "1");
        lb.sysctl("net.ipv6.conf.all.forwarding", "1");

        let client_v4 = Ipv4Addr::new(10, 111, 0, 2);
        let client_v6 = "fd00:5c:0:1::2".parse().unwrap();
        let client = Host::routed_via(client_ns, "eth0", client_v4, client_v6, &lb_client_side);
        let targets = (0..n_targets)
            .map(|i| {
                let ns = Namespace::new(&format!("target{i}"));
                switch.connect(&format!("t{i}"), &ns, "eth0");
                let v4 = Ipv4Addr::new(10, 111, 1, 10 + i as u8);
                let v6 = Ipv6Addr::new(0xfd00, 0x5c, 0, 2, 0, 0, 0, 0x10 + i as u16);
                Host::routed_via(ns, "eth0", v4, v6, &lb_target_side)
            })
            .collect();
        LbTopology {
            client,
            lb,
            lb_client_side,
            lb_target_side,
            switch,
            targets,
        }
    }

    /// The names of every namespace of the topology.
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.client.ns, &self.lb, &self.switch.ns]
            .into_iter()
            .chain(self.targets.iter().map(|t| &t.ns))
            .map(|ns| ns.name().to_string())
            .collect()
    }
}

impl Link {
    /// Gives `iface` in `ns` its addresses, as a /24 and a /64.
    fn configure(ns: &Namespace, iface: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Link {
        ns.add_addr(iface, &format!("{v4}/24"));
        ns.add_addr(iface, &format!("{v6}/64"));
        Link {
            iface: iface.to_string(),
            mac: ns.mac(iface),
            v4,
            v6,
        }
    }
}

impl Host {
    /// Makes this host accept packets addressed to `vips` (for `dsr` and `tunnel` targets):
    /// the addresses on `lo`, and no ARP answers for them on other interfaces.
    pub fn hold_vips(&self, vips: &[std::net::IpAddr]) {
        self.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        self.ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
        for vip in vips {
            let prefix = if vip.is_ipv4() { 32 } else { 128 };
            self.ns.add_addr("lo", &format!("{vip}/{prefix}"));
        }
    }

    /// Configures `iface` (see [`Link::configure`]) with default routes via `gateway`.
    fn routed_via(ns: Namespace, iface: &str, v4: Ipv4Addr, v6: Ipv6Addr, gateway: &Link) -> Host {
        let link = Link::configure(&ns, iface, v4, v6);
        ns.add_default_route(gateway.v4.into());
        ns.add_default_route(gateway.v6.into());
        Host { ns, link }
    }
}

struct ChildState {
    child: Child,
    status: Option<ExitStatus>,
}

impl ChildState {
    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waiting for a child process");
        }
        self.status
    }

    fn kill_and_reap(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

/// A process spawned by [`Namespace::spawn`], killed and reaped on drop.
pub struct ChildGuard {
    what: String,
    state: Arc<Mutex<ChildState>>,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers_done: mpsc::Receiver<()>,
    readers_left: usize,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.lock().child.id()
    }

    /// Sends `signal` (e.g. `libc::SIGINT`) unless the process has already been reaped.
    pub fn signal(&self, signal: i32) {
        let state = self.lock();
        // Holding the lock while the child is unreaped means its pid cannot have been reused.
        if state.status.is_none() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(state.child.id() as i32, signal) };
        }
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.lock().try_status()
    }

    /// Waits for the process to exit and its output to be captured; panics after `timeout`
    /// with what it wrote to stderr.
    pub fn wait_timeout(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        wait_until(timeout, &format!("{} to exit", self.what), || {
            status = self.try_status();
            status.is_some()
        });
        // Output ends shortly after exit, unless a grandchild kept the pipes open.
        while self.readers_left > 0 {
            let left = deadline
                .saturating_duration_since(Instant::now())
                .max(POLL_INTERVAL);
            match self.readers_done.recv_timeout(left) {
                Ok(()) => self.readers_left -= 1,
                Err(_) => break,
            }
        }
        status.expect("set by wait_until")
    }

    /// Sends `signal` and waits for the exit, see [`wait_timeout`](Self::wait_timeout).
    pub fn stop(&mut self, signal: i32, timeout: Duration) -> ExitStatus {
        self.signal(signal);
        self.wait_timeout(timeout)
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChildState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.lock().kill_and_reap();
    }
}

/// Copies a pipe into a buffer on a thread until EOF, then reports on `done`.
fn capture(
    mut pipe: impl io::Read + Send + 'static,
    done: mpsc::Sender<()>,
) -> Arc<Mutex<Vec<u8>>> {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    thread::Builder::new()
        .name("child output".into())
        .spawn(move || {
            let mut chunk = [0u8; 4096];
            // Reads end with EOF when the process (and anything holding the pipe) exits.
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = done.send(());
        })
        .expect("spawning an output reader");
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_found_next_to_tests_and_xtask() {
        assert_eq!(
            binary_next_to(Path::new("/w/target/debug/deps/sluice_tests-abc"), "sluice"),
            Path::new("/w/target/debug/sluice")
        );
        assert_eq!(
            binary_next_to(Path::new("/w/target/release/xtask"), "sluice"),
            Path::new("/w/target/release/sluice")
        );
    }

    #[test]
    fn names_carry_their_owner() {
        let name = unique_name("lb");
        assert!(name.starts_with(NAME_PREFIX));
        assert_eq!(owner_pid(&name), Some(std::process::id() as i32));
        assert_ne!(unique_name("lb"), name);
        assert_eq!(owner_pid("sluicet-17-3-target-a"), Some(17));
        assert_eq!(owner_pid("someone-elses-17"), None);
    }

    #[test]
    fn ip_link_output_is_parsed() {
        let native = "3: eth0@if2: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 xdp qdisc noqueue state UP mode DEFAULT group default qlen 1000\\    link/ether 82:0f:49:0d:0d:9e brd ff:ff:ff:ff:ff:ff link-netns x\\    prog/xdp id 106 name sluice tag db6985a54777bc96 jited";
        assert_eq!(parse_link_xdp(native).as_deref(), Some("xdp"));
        assert_eq!(
            parse_link_mac(native),
            Some([0x82, 0x0f, 0x49, 0x0d, 0x0d, 0x9e])
        );
        let generic = native.replace(" xdp ", " xdpgeneric ");
        assert_eq!(parse_link_xdp(&generic).as_deref(), Some("xdpgeneric"));
        let none = native.replace(" xdp ", " ");
        assert_eq!(parse_link_xdp(&none.replace("prog/xdp", "")), None);
    }

    #[test]
    fn macs_round_trip() {
        let mac = [0x02, 0, 0xab, 0x10, 0xff, 0x01];
        assert_eq!(format_mac(mac), "02:00:ab:10:ff:01");
        assert_eq!(parse_mac("02:00:ab:10:ff:01"), Some(mac));
        assert_eq!(parse_mac("02:00:ab:10:ff"), None);
        assert_eq!(parse_mac("02:00:ab:10:ff:01:02"), None);
    }

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(10), "three calls", || {
            calls += 1;
            calls == 3
        });
        assert_eq!(calls, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn wait_until_names_what_timed_out() {
        wait_until(Duration::from_millis(30), "the impossible", || false);
    }
}
