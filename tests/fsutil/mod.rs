//! A harness for mount tests: real node processes and real mounts, each cleaned up on
//! drop (children killed by pid, mounts unmounted) even when a test fails.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_chordfs");

/// Polls `f` every 20 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

/// Runs a command and asserts it succeeded; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    ok(Command::new("sh").arg("-c").arg(script))
}

pub struct Node {
    pub child: Child,
    pub addr: String,
    pub dir: PathBuf,
}

impl Node {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Ring {
    pub nodes: Vec<Node>,
    pub tmp: tempfile::TempDir,
}

impl Ring {
    /// Starts `n` nodes with `replicas` copies and waits until every node is in the ring.
    pub fn start(n: usize, replicas: usize) -> Ring {
        Ring::start_with(n, replicas, &[])
    }

    /// As `start`, with extra `chordfs node` arguments.
    pub fn start_with(n: usize, replicas: usize, extra: &[&str]) -> Ring {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut ring = Ring {
            nodes: Vec::new(),
            tmp,
        };
        for i in 0..n {
            let dir = ring.tmp.path().join(format!("node{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let log = std::fs::File::create(ring.tmp.path().join(format!("node{i}.log"))).unwrap();
            let mut cmd = Command::new(BIN);
            cmd.args(["node", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
                .arg("--data")
                .arg(&dir)
                .args([
                    "--stabilize-ms",
                    "100",
                    "--repair-ms",
                    "500",
                    "--fix-fingers-ms",
                    "200",
                ])
                .args([
                    "--replicas",
                    &replicas.to_string(),
                    "--rpc-timeout-ms",
                    "1000",
                ])
                .args(extra);
            if let Some(first) = ring.nodes.first() {
                cmd.args(["--join", &first.addr]);
            }
            let child = cmd
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn node");
            let json = dir.join("node.json");
            let addr = wait_for("node.json", Duration::from_secs(20), || {
                let s = std::fs::read_to_string(&json).ok()?;
                let v: serde_json::Value = serde_json::from_str(&s).ok()?;
                Some(v["addr"].as_str()?.to_string())
            });
            ring.nodes.push(Node { child, addr, dir });
        }
        ring.wait_members(n);
        ring
    }

    pub fn addr(&self) -> &str {
        &self.nodes[0].addr
    }

    /// Waits until a status walk from the first node finds `n` reachable members.
    pub fn wait_members(&self, n: usize) {
        wait_for("ring to converge", Duration::from_secs(30), || {
            let out = Command::new(BIN)
                .args(["status", "--json", "--ring", self.addr()])
                .output()
                .ok()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = v.as_array()?;
            let up = rows
                .iter()
                .filter(|r| r["reachable"].as_bool() == Some(true))
                .count();
            (rows.len() == n && up == n).then_some(())
        });
    }
}

/// A mount of a ring; unmounted (and its process ended) on drop.
pub struct Mount {
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Mount {
    pub fn new(ring: &str, opts: &str) -> Mount {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["mount", "--ring", ring]).arg(&dir);
        // The background mount's log goes with the test's temp dir, not /tmp.
        cmd.env("CHORDFS_MOUNT_LOG", tmp.path().join("mount.log"));
        if !opts.is_empty() {
            cmd.args(["-o", opts]);
        }
        ok(&mut cmd);
        Mount { dir, _tmp: tmp }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        unmount(&self.dir);
    }
}

/// Pids of mount processes serving `dir`.
pub fn mount_pids(dir: &Path) -> Vec<u32> {
    let want = dir.to_string_lossy().into_owned();
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("chordfs"))
            && args.iter().any(|a| a == "--foreground")
            && args.contains(&want)
        {
            pids.push(pid);
        }
    }
    pids
}

pub fn is_mounted(dir: &Path) -> bool {
    let want = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// Unmounts `dir` (lazily if busy), waits for its process to end, kills it if it won't.
pub fn unmount(dir: &Path) {
    let pids = mount_pids(dir);
    if is_mounted(dir) {
        let st = Command::new("umount")
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            let _ = Command::new("umount").arg("-l").arg(dir).status();
        }
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if pids
            .iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists() || is_zombie(*p))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in pids {
        let _ = Command::new("kill").args(["-9", &p.to_string()]).status();
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
