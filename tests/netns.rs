//! Real hosts: every node in its own network namespace, joined by veth links to a Linux
//! bridge in a namespace of its own, the client in another; then links are cut, slowed
//! and made lossy, and the ring is partitioned in two and healed.
//!
//! ```text
//!  cfs-c-TAG (client, 10.77.0.100)        cfs-nI-TAG (node I, 10.77.0.(10+I):7400)
//!        eth0                                   eth0
//!         |  veth                                |  veth
//!        vc --------- br0 (cfs-br-TAG) -------- vnI        br1: the other side of a partition
//! ```
//!
//! Checked in every scenario: every acknowledged `chordfs put` reads back byte-identical
//! after the heal; the ring heals into one cycle (`chordfs status --json`: every member
//! reachable, each one's successor the next id and its predecessor the previous one); a
//! client whose data is out of reach gets a non-zero exit within a bound, never a hang.
//!
//! Everything (namespaces, links, processes, files) is made here and removed by a Drop
//! guard, on failure too. Traffic only ever flows inside these namespaces. Skips with a
//! printed reason when not root or when `ip netns` is unavailable.
//!
//! The kernel may lack `sch_netem`: delay and loss then are emulated (see [`Impair`]).

mod common;

use common::{assert_same, bin, kill_with_parent, random_bytes, tail};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Nodes in the ring (each in its own namespace).
const NODES: usize = 5;
/// The port every node listens on, inside its own namespace.
const PORT: u16 = 7400;
/// Past this a CLI call counts as hung: far above the client's own deadline (its
/// operations give up after 10 s), so only a real hang reaches it.
const HANG: Duration = Duration::from_secs(45);
/// The wait for anything the ring does by itself (converge, repair, heal).
const SETTLE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);

fn node_ip(i: usize) -> String {
    format!("10.77.0.{}", 10 + i)
}

fn node_addr(i: usize) -> String {
    format!("{}:{PORT}", node_ip(i))
}

const CLIENT_IP: &str = "10.77.0.100";

/// Runs `ip`/`tc`/... to completion; Err with its stderr when it fails.
fn sh(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(prog: &str, args: &[&str]) {
    if let Err(e) = sh(prog, args) {
        panic!("{e}");
    }
}

/// How one `chordfs` client call ended.
#[derive(Debug)]
struct Run {
    ok: bool,
    /// Killed at [`HANG`]: it never returned.
    hung: bool,
    took: Duration,
    stdout: String,
    stderr: String,
}

/// How delay and loss are made on a link.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Impair {
    /// `tc qdisc netem delay .. loss ..`: the real thing.
    Netem,
    /// No netem in this kernel: delay from a slow `tbf` queue (packets wait behind the
    /// rate limit, up to its latency bound, then drop), loss from iptables' `statistic`
    /// match dropping incoming packets at random.
    TbfIptables,
    /// The same, with nftables' `numgen random` for the loss.
    TbfNft,
    /// Delay by tbf only; neither iptables nor nft is installed.
    TbfOnly,
}

/// The namespaces, links and processes of one run. Drop removes all of it.
struct Net {
    tag: String,
    dir: tempfile::TempDir,
    secret: PathBuf,
    nodes: Vec<Option<Child>>,
    made: Vec<String>,
}

impl Net {
    fn bridge_ns(&self) -> String {
        format!("cfs-br-{}", self.tag)
    }
    fn node_ns(&self, i: usize) -> String {
        format!("cfs-n{i}-{}", self.tag)
    }
    fn client_ns(&self) -> String {
        format!("cfs-c-{}", self.tag)
    }

    /// Builds the namespaces and links (no processes yet).
    fn build() -> Net {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tag = format!("{:x}{:05x}", std::process::id(), nanos & 0xfffff);
        let dir = tempfile::Builder::new()
            .prefix("chordfs-netns-")
            .tempdir()
            .expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, format!("netns-{tag}-{nanos}\n")).expect("secret file");
        let mut net = Net {
            tag,
            dir,
            secret,
            nodes: Vec::new(),
            made: Vec::new(),
        };
        let br = net.bridge_ns();
        net.add_ns(&br);
        for b in ["br0", "br1"] {
            must("ip", &["-n", &br, "link", "add", b, "type", "bridge"]);
            must("ip", &["-n", &br, "link", "set", b, "up"]);
        }
        for i in 0..NODES {
            let ns = net.node_ns(i);
            net.add_host(&ns, &format!("vn{i}"), &node_ip(i));
        }
        let c = net.client_ns();
        net.add_host(&c, "vc", CLIENT_IP);
        net
    }

    fn add_ns(&mut self, ns: &str) {
        must("ip", &["netns", "add", ns]);
        self.made.push(ns.to_string());
        must("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    /// A namespace with `eth0` at `ip`/24, linked to br0 by the veth `port`.
    fn add_host(&mut self, ns: &str, port: &str, ip: &str) {
        self.add_ns(ns);
        let br = self.bridge_ns();
        must(
            "ip",
            &[
                "-n", &br, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        );
        must(
            "ip",
            &["-n", &br, "link", "set", port, "master", "br0", "up"],
        );
        must(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        must("ip", &["-n", ns, "link", "set", "eth0", "up"]);
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}.log"))
    }

    /// Starts node `i` in its namespace (node 0 starts the ring, the others join it) and
    /// waits for its node.json.
    fn start_node(&mut self, i: usize) {
        let data = self.dir.path().join(format!("node-{i}"));
        let log = std::fs::File::create(self.log(i)).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.node_ns(i), bin(), "node"])
            .args(["--listen", &node_addr(i)])
            .arg("--data")
            .arg(&data)
            .arg("--secret-file")
            .arg(&self.secret)
            .args(["--replicas", "3", "--http", "127.0.0.1:7480"])
            .args(["--stabilize-ms", "100", "--fix-fingers-ms", "200"])
            .args(["--check-predecessor-ms", "200", "--repair-ms", "500"])
            .args(["--rpc-timeout-ms", "1000"])
            .env("CHORDFS_LOG", "warn,chordfs=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if i > 0 {
            cmd.args(["--join", &node_addr(0)]);
        }
        kill_with_parent(&mut cmd);
        // `ip netns exec` execs the command: the child's pid is the node's.
        let mut child = cmd.spawn().expect("spawn ip netns exec chordfs node");
        let info = data.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let serving = std::fs::read_to_string(&info)
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|v| v["pid"].as_u64() == Some(child.id() as u64));
            if serving {
                break;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("node {i} exited ({st}):\n{}", tail(&self.log(i), 30));
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {i} did not serve in 30 s:\n{}",
                    tail(&self.log(i), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.nodes.push(Some(child));
    }

    /// `chordfs ARGS --ring SEED --secret-file S` from the client's namespace, bounded by
    /// [`HANG`].
    fn client(&self, seed: &str, args: &[&str]) -> Run {
        self.cli_in(&self.client_ns(), seed, args)
    }

    /// The same from namespace `ns` (a node's, to look at its side of a partition).
    fn cli_in(&self, ns: &str, seed: &str, args: &[&str]) -> Run {
        static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let k = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out_path = self.dir.path().join(format!("cli-{k}.out"));
        let err_path = self.dir.path().join(format!("cli-{k}.err"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, bin()])
            .args(args)
            .args(["--ring", seed])
            .arg("--secret-file")
            .arg(&self.secret)
            .env_remove("CHORDFS_RING")
            .env_remove("CHORDFS_SECRET_FILE")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&out_path).expect("out")))
            .stderr(Stdio::from(std::fs::File::create(&err_path).expect("err")));
        kill_with_parent(&mut cmd);
        let started = Instant::now();
        let mut child = cmd.spawn().expect("spawn client");
        let max_polls = HANG.as_millis() / 20 + 1;
        let mut status = None;
        for _ in 0..max_polls {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
                break;
            }
            if started.elapsed() >= HANG {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = started.elapsed();
        let hung = status.is_none();
        if hung {
            let _ = child.kill();
            let _ = child.wait();
        }
        Run {
            ok: status.is_some_and(|s| s.success()),
            hung,
            took,
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        }
    }

    /// Ok when `chordfs status --json` through `seed` shows exactly `want` (node
    /// indices) as one cycle: all reachable, successors and predecessors in id order.
    fn check_ring(&self, ns: &str, seed: &str, want: &[usize]) -> Result<(), String> {
        let run = self.cli_in(ns, seed, &["status", "--json"]);
        if !run.ok {
            return Err(format!("status failed: {}", run.stderr.trim()));
        }
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&run.stdout).map_err(|e| format!("status json: {e}"))?;
        let mut rows: Vec<(String, String, String, String, bool)> = rows
            .iter()
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
                (
                    s("id"),
                    s("addr"),
                    s("predecessor"),
                    s("successor"),
                    r["reachable"].as_bool() == Some(true),
                )
            })
            .collect();
        rows.sort();
        let addrs: BTreeSet<String> = rows.iter().map(|r| r.1.clone()).collect();
        let wanted: BTreeSet<String> = want.iter().map(|i| node_addr(*i)).collect();
        if addrs != wanted {
            return Err(format!("members {addrs:?}, want {wanted:?}"));
        }
        let n = rows.len();
        for (k, r) in rows.iter().enumerate() {
            if !r.4 {
                return Err(format!("{} unreachable", r.1));
            }
            let (next, prev) = (&rows[(k + 1) % n].0, &rows[(k + n - 1) % n].0);
            if n > 1 && (&r.3 != next || &r.2 != prev) {
                return Err(format!("{}: not yet linked to its neighbours", r.1));
            }
        }
        Ok(())
    }

    /// Waits (bounded) until [`Net::check_ring`] holds; returns how long it took.
    fn wait_ring(&self, seed: &str, want: &[usize]) -> Duration {
        self.wait_ring_in(&self.client_ns(), seed, want)
    }

    fn wait_ring_in(&self, ns: &str, seed: &str, want: &[usize]) -> Duration {
        let started = Instant::now();
        let mut last = String::new();
        let max_polls = SETTLE.as_millis() / POLL.as_millis() + 1;
        for _ in 0..max_polls {
            match self.check_ring(ns, seed, want) {
                Ok(()) => return started.elapsed(),
                Err(e) => last = e,
            }
            if started.elapsed() >= SETTLE {
                break;
            }
            std::thread::sleep(POLL);
        }
        panic!("ring {want:?} not formed within {SETTLE:?}: {last}");
    }

    /// Cuts (or restores) the cable of a host: its veth end on the bridge goes down, so
    /// its packets go nowhere, with no error on its side but a lost carrier.
    fn set_link(&self, port: &str, up: bool) {
        let state = if up { "up" } else { "down" };
        must("ip", &["-n", &self.bridge_ns(), "link", "set", port, state]);
    }

    /// Plugs a host's veth into bridge `br` (br0: the ring; br1: the other side).
    fn set_bridge(&self, port: &str, br: &str) {
        must(
            "ip",
            &["-n", &self.bridge_ns(), "link", "set", port, "master", br],
        );
    }

    /// Which way delay and loss can be made here.
    fn impair_kind(&self) -> Impair {
        let ns = self.client_ns();
        let tc = [
            "-n", &ns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms",
        ];
        if sh("tc", &tc).is_ok() {
            must("tc", &["-n", &ns, "qdisc", "del", "dev", "eth0", "root"]);
            return Impair::Netem;
        }
        let on_path = |p: &str| sh("sh", &["-c", &format!("command -v {p}")]).is_ok();
        if on_path("iptables") {
            Impair::TbfIptables
        } else if on_path("nft") {
            Impair::TbfNft
        } else {
            Impair::TbfOnly
        }
    }

    /// Delay and `loss_pct` % loss on `ns`'s eth0 (both directions for the loss).
    fn impair(&self, ns: &str, kind: Impair, loss_pct: u32) {
        let x = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        let p = format!("{loss_pct}%");
        let prob = format!("{:.2}", loss_pct as f64 / 100.0);
        let lt = loss_pct.to_string();
        match kind {
            Impair::Netem => x(&[
                "tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "40ms", "10ms",
                "loss", &p,
            ]),
            _ => x(&[
                "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "8mbit", "burst",
                "16kb", "latency", "150ms",
            ]),
        }
        match kind {
            Impair::Netem | Impair::TbfOnly => {}
            Impair::TbfIptables => {
                for chain in ["INPUT", "OUTPUT"] {
                    x(&[
                        "iptables",
                        "-A",
                        chain,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &prob,
                        "-j",
                        "DROP",
                    ]);
                }
            }
            Impair::TbfNft => {
                x(&["nft", "add", "table", "inet", "cfsloss"]);
                for (chain, hook) in [("in", "input"), ("out", "output")] {
                    let spec = format!("{{ type filter hook {hook} priority 0; }}");
                    x(&["nft", "add", "chain", "inet", "cfsloss", chain, &spec]);
                    x(&[
                        "nft", "add", "rule", "inet", "cfsloss", chain, "numgen", "random", "mod",
                        "100", "<", &lt, "drop",
                    ]);
                }
            }
        }
    }

    fn unimpair(&self, ns: &str, kind: Impair) {
        let x = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns];
            all.extend_from_slice(args);
            must("ip", &all);
        };
        x(&["tc", "qdisc", "del", "dev", "eth0", "root"]);
        match kind {
            Impair::TbfIptables => {
                x(&["iptables", "-F", "INPUT"]);
                x(&["iptables", "-F", "OUTPUT"]);
            }
            Impair::TbfNft => x(&["nft", "delete", "table", "inet", "cfsloss"]),
            _ => {}
        }
    }

    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("----- node {i} -----\n{}\n", tail(&self.log(i), 25)))
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in self.nodes.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // CHORDFS_TEST_KEEP=1 keeps a failed run's data dirs and logs for a look.
            if std::env::var_os("CHORDFS_TEST_KEEP").is_some() {
                let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp"));
                eprintln!("kept {}", dir.keep().display());
            }
        }
        // Deleting a namespace takes its end of every veth with it.
        for ns in self.made.iter().rev() {
            let _ = sh("ip", &["netns", "del", ns]);
        }
    }
}

/// The files acknowledged so far: remote path and content.
#[derive(Default)]
struct Acked {
    files: Vec<(String, Vec<u8>)>,
    seed: u64,
}

impl Acked {
    fn local(net: &Net, name: &str) -> PathBuf {
        net.dir
            .path()
            .join(name.trim_start_matches('/').replace('/', "_"))
    }

    /// One `chordfs put` of `len` fresh bytes; Ok (and remembered) if acknowledged.
    fn put(&mut self, net: &Net, seed: &str, path: &str, len: usize) -> Result<Run, Run> {
        self.seed += 1;
        let data = random_bytes(len, self.seed * 7919);
        let local = Self::local(net, path);
        std::fs::write(&local, &data).expect("write local file");
        let run = net.client(seed, &["put", local.to_str().expect("utf-8"), path]);
        assert!(!run.hung, "put {path} hung for {:?}", run.took);
        if run.ok {
            self.files.push((path.to_string(), data));
            Ok(run)
        } else {
            Err(run)
        }
    }

    /// Puts until acknowledged, at most `tries` times; every failure must be a prompt
    /// error. Returns the number of failed attempts.
    fn put_retrying(&mut self, net: &Net, seed: &str, path: &str, len: usize, tries: u32) -> u32 {
        for k in 0..tries {
            match self.put(net, seed, path, len) {
                Ok(_) => return k,
                Err(run) => eprintln!(
                    "  put {path}: error after {:.1}s: {}",
                    run.took.as_secs_f64(),
                    run.stderr.trim().lines().next().unwrap_or("")
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        panic!("put {path} failed {tries} times");
    }

    /// Every acknowledged file reads back byte-identical.
    fn verify(&self, net: &Net, seed: &str) {
        for (path, want) in &self.files {
            let out = net.dir.path().join("readback");
            let run = net.client(seed, &["get", path, out.to_str().expect("utf-8")]);
            assert!(
                run.ok,
                "get {path} failed after {:?} (hung: {}): {}",
                run.took,
                run.hung,
                run.stderr.trim()
            );
            let got = std::fs::read(&out).expect("read back");
            assert_same(path, &got, want);
        }
    }
}

fn skip_reason() -> Option<String> {
    #[allow(unsafe_code)]
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Some("not root (network namespaces need CAP_SYS_ADMIN)".into());
    }
    if let Err(e) = sh("ip", &["netns", "list"]) {
        return Some(format!("`ip netns` unavailable: {e}"));
    }
    None
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[test]
fn cut_impair_partition_heal() {
    if let Some(why) = skip_reason() {
        eprintln!("SKIPPED netns test: {why}");
        return;
    }
    let t0 = Instant::now();
    let mut net = Net::build();
    for i in 0..NODES {
        net.start_node(i);
    }
    let all: Vec<usize> = (0..NODES).collect();
    let seed0 = node_addr(0);
    let took = net.wait_ring(&seed0, &all);
    eprintln!("ring of {NODES} formed across namespaces in {}", secs(took));
    let mut acked = Acked::default();
    for (k, len) in [10usize, 300_000, 1_100_000].into_iter().enumerate() {
        acked.put_retrying(&net, &seed0, &format!("/before/f{k}"), len, 3);
    }
    acked.verify(&net, &seed0);

    // 1. Cut one node's link, write and read while it is gone, cut the client's own link
    //    (errors, not hangs), then bring both back.
    let victim = 3;
    net.set_link(&format!("vn{victim}"), false);
    let rest: Vec<usize> = all.iter().copied().filter(|i| *i != victim).collect();
    let took = net.wait_ring(&seed0, &rest);
    eprintln!(
        "1. cut node {victim}: ring of {} in {}",
        rest.len(),
        secs(took)
    );
    for k in 0..2 {
        acked.put_retrying(&net, &seed0, &format!("/cut/f{k}"), 400_000, 3);
    }
    acked.verify(&net, &seed0);
    net.set_link("vc", false);
    let get = net.client(&seed0, &["get", "/before/f1", "/dev/null"]);
    let put = acked.put(&net, &seed0, "/cut/unreachable", 1000);
    net.set_link("vc", true);
    assert!(!get.ok && !get.hung, "get without a link: {get:?}");
    let put = put.expect_err("put without a link was acknowledged");
    assert!(!put.hung, "put without a link hung: {put:?}");
    eprintln!(
        "1. client cut off: get failed after {} ({}), put after {} ({})",
        secs(get.took),
        get.stderr.trim().lines().next().unwrap_or(""),
        secs(put.took),
        put.stderr.trim().lines().next().unwrap_or("")
    );
    net.set_link(&format!("vn{victim}"), true);
    let took = net.wait_ring(&seed0, &all);
    eprintln!(
        "1. node {victim} back: ring of {NODES} healed in {}",
        secs(took)
    );
    acked.verify(&net, &node_addr(victim));

    // 2. Delay and loss on two nodes and the client while writing and reading.
    let kind = net.impair_kind();
    match kind {
        Impair::Netem => eprintln!("2. netem: delay 40ms±10ms, loss 5%"),
        Impair::TbfOnly => eprintln!(
            "2. no netem, iptables or nft: delay emulated by tbf (8 Mbit/s, 150 ms queue); \
             no random loss (install iptables or nftables for it)"
        ),
        _ => eprintln!(
            "2. no sch_netem in this kernel: delay emulated by tbf (8 Mbit/s, 150 ms \
             queue), loss 5% by {} random drops",
            if kind == Impair::TbfIptables {
                "iptables statistic"
            } else {
                "nft numgen"
            }
        ),
    }
    let slow = [net.node_ns(1), net.node_ns(4), net.client_ns()];
    for ns in &slow {
        net.impair(ns, kind, 5);
    }
    let started = Instant::now();
    let mut failed = 0;
    for k in 0..3 {
        failed += acked.put_retrying(&net, &seed0, &format!("/lossy/f{k}"), 700_000, 5);
    }
    acked.verify(&net, &seed0);
    eprintln!(
        "2. 3 puts ({failed} failed attempts, each a prompt error) and {} verified gets \
         over impaired links in {}",
        acked.files.len(),
        secs(started.elapsed())
    );
    for ns in &slow {
        net.unimpair(ns, kind);
    }
    let took = net.wait_ring(&seed0, &all);
    eprintln!("2. impairment removed: ring of {NODES} in {}", secs(took));

    // 3. Partition: nodes 3 and 4 onto the other bridge. The client writes on the
    //    majority side, then visits the minority side (whatever it is told there must be
    //    a prompt error or the right bytes), then the partition heals.
    let (side_a, side_b) = (vec![0, 1, 2], vec![3, 4]);
    for i in &side_b {
        net.set_bridge(&format!("vn{i}"), "br1");
    }
    let took = net.wait_ring(&seed0, &side_a);
    let took_b = net.wait_ring_in(&net.node_ns(3), &node_addr(3), &side_b);
    eprintln!(
        "3. partition {side_a:?} | {side_b:?}: each side a ring of its own ({} / {})",
        secs(took),
        secs(took_b)
    );
    let mut failed = 0;
    for k in 0..3 {
        failed += acked.put_retrying(&net, &seed0, &format!("/part/a{k}"), 500_000, 5);
    }
    eprintln!("3. majority side: 3 puts acknowledged ({failed} failed attempts)");
    net.set_bridge("vc", "br1");
    let seed3 = node_addr(3);
    let (mut read, mut refused) = (0, 0);
    let mut slowest = Duration::ZERO;
    for (path, want) in &acked.files {
        let out = net.dir.path().join("minority-read");
        let run = net.client(&seed3, &["get", path, out.to_str().expect("utf-8")]);
        assert!(!run.hung, "get {path} on the minority side hung");
        slowest = slowest.max(run.took);
        if run.ok {
            assert_same(path, &std::fs::read(&out).expect("read"), want);
            read += 1;
        } else {
            refused += 1;
        }
    }
    // Writes on the minority side are refused: peers lost to the partition still count
    // towards the copies a write needs (including those a node learns of only by its
    // successor's shorter list, which it pings: `probe_vanished`), and a side that sees
    // fewer nodes than it lost never takes them for dead. Whatever it does acknowledge
    // must survive the heal (asserted below).
    let mut minority = Acked {
        seed: 1000,
        ..Acked::default()
    };
    for k in 0..2 {
        let path = format!("/part/b{k}");
        if let Err(run) = minority.put(&net, &seed3, &path, 200_000) {
            slowest = slowest.max(run.took);
        }
    }
    let minority_acked = minority.files.len();
    if minority_acked > 0 {
        // What the minority's nodes knew when they acknowledged: their view of the
        // ring (lost peers, short writes), for the record of the open bug.
        for i in &side_b {
            let log = std::fs::read_to_string(net.log(*i)).unwrap_or_default();
            for line in log.lines().filter(|l| {
                [
                    "acknowledged with",
                    "unreachable",
                    "lost",
                    "rejoin",
                    "joined",
                ]
                .iter()
                .any(|w| l.contains(w))
            }) {
                eprintln!("3. node {i}: {line}");
            }
        }
    }
    eprintln!(
        "3. minority side: {read} files read intact, {refused} refused with an error, \
         {minority_acked}/2 puts acknowledged; slowest answer {}",
        secs(slowest)
    );
    net.set_bridge("vc", "br0");
    for i in &side_b {
        net.set_bridge(&format!("vn{i}"), "br0");
    }
    let took = net.wait_ring(&seed0, &all);
    eprintln!("3. partition healed: ring of {NODES} in {}", secs(took));
    acked.verify(&net, &seed0);
    acked.verify(&net, &seed3);
    for (path, want) in &minority.files {
        let out = net.dir.path().join("minority-back");
        let run = net.client(&seed0, &["get", path, out.to_str().expect("utf-8")]);
        assert!(!run.hung, "get {path} hung");
        assert!(
            run.ok && std::fs::read(&out).ok().as_ref() == Some(want),
            "{path}, acknowledged on the minority side, is gone after the heal ({})",
            run.stderr.trim().lines().next().unwrap_or("wrong bytes")
        );
        eprintln!("3. {path}, acknowledged on the minority side, survived the heal");
    }
    eprintln!(
        "all {} acknowledged files byte-identical after every heal; total {}",
        acked.files.len(),
        secs(t0.elapsed())
    );
    // A last check that nothing of ours is left is in Drop; here the ring must still be
    // one cycle.
    net.check_ring(&net.client_ns(), &seed0, &all)
        .expect("one ring at the end");
}
