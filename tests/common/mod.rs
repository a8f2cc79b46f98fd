//! The cluster harness: real `chordfs node` processes on 127.0.0.1 with OS-chosen ports,
//! each with its own data dir under one temp dir. Dropping a [`Cluster`] SIGKILLs every
//! child it started (by pid) and removes the temp dir, whether the test passed or not;
//! when the test failed, the tail of every node's log is printed first.
//!
//! State is observed through the wire protocol (GetState, ListKeys, ...) and waited on
//! with [`wait_until`]: poll a predicate every 100 ms up to a deadline, never sleep and
//! hope.

#![allow(dead_code)] // each test binary uses its own part of the harness

use chordfs::client::{Client, ClientConfig};
use chordfs::id::Id;
use chordfs::net::TcpTransport;
use chordfs::proto::{KeyInfo, NodeState, Request, Response};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Timeout of one RPC the harness makes.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How often [`wait_until`] looks again.
pub const POLL_EVERY: Duration = Duration::from_millis(100);
/// The default wait for anything the ring does by itself (converge, repair).
pub const SETTLE: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_chordfs")
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with the last reason.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    let max_polls = (timeout.as_millis() / POLL_EVERY.as_millis()).max(1) + 1;
    let mut last = String::from("never checked");
    for _ in 0..max_polls {
        match check().await {
            Ok(()) => return,
            Err(why) => last = why,
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}: {last}");
}

/// How the nodes of a cluster run.
#[derive(Clone, Debug)]
pub struct Opts {
    pub replicas: usize,
    /// Extra `chordfs node` arguments.
    pub extra: Vec<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            replicas: 3,
            extra: Vec::new(),
        }
    }
}

/// One node process (or the memory of one that was stopped).
pub struct NodeProc {
    pub dir: PathBuf,
    pub log: PathBuf,
    pub id: Id,
    pub addr: String,
    child: Option<Child>,
    /// Stopped with SIGSTOP: the process exists but answers nothing.
    frozen: bool,
}

impl NodeProc {
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("addr has a port")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Running and not frozen: a member the ring should have.
    pub fn is_running(&self) -> bool {
        self.child.is_some() && !self.frozen
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProc>,
    pub opts: Opts,
    pub net: Arc<TcpTransport>,
    // Dropped last (after the children are killed): removes every data dir.
    root: tempfile::TempDir,
}

#[derive(serde::Deserialize)]
struct Endpoints {
    id: String,
    addr: String,
    pid: u32,
}

impl Cluster {
    /// Starts `n` nodes, one by one, each joining through the first, and waits until the
    /// ring has converged.
    pub async fn start(n: usize, opts: Opts) -> Cluster {
        let mut c = Cluster::empty(opts);
        for _ in 0..n {
            c.add_node().await;
        }
        c.wait_converged().await;
        c
    }

    pub fn empty(opts: Opts) -> Cluster {
        let root = tempfile::Builder::new()
            .prefix("chordfs-test-")
            .tempdir()
            .expect("temp dir");
        Cluster {
            nodes: Vec::new(),
            opts,
            net: TcpTransport::new(),
            root,
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Indices of the nodes running now.
    pub fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].is_running())
            .collect()
    }

    pub fn live_addrs(&self) -> Vec<String> {
        self.live()
            .into_iter()
            .map(|i| self.nodes[i].addr.clone())
            .collect()
    }

    /// Any running node's address, for joins and clients.
    pub fn seed(&self) -> String {
        let i = *self.live().first().expect("a live node");
        self.nodes[i].addr.clone()
    }

    fn node_args(&self, dir: &Path, listen: &str, join: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "node".into(),
            "--listen".into(),
            listen.into(),
            "--data".into(),
            dir.display().to_string(),
            "--replicas".into(),
            self.opts.replicas.to_string(),
            "--stabilize-ms".into(),
            "100".into(),
            "--fix-fingers-ms".into(),
            "200".into(),
            "--check-predecessor-ms".into(),
            "200".into(),
            "--repair-ms".into(),
            "500".into(),
            "--rpc-timeout-ms".into(),
            "1000".into(),
        ];
        if let Some(j) = join {
            args.push("--join".into());
            args.push(j.into());
        }
        args.extend(self.opts.extra.iter().cloned());
        args
    }

    /// Starts a process and waits for the node.json it writes once it serves.
    async fn spawn(&self, index: usize, dir: &Path, listen: &str, join: Option<&str>) -> NodeProc {
        let log = self.root().join(format!("node-{index}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(bin());
        cmd.args(self.node_args(dir, listen, join))
            .env(
                "CHORDFS_LOG",
                std::env::var("CHORDFS_TEST_LOG").unwrap_or_else(|_| "warn,chordfs=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        kill_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("spawn chordfs node");
        let pid = child.id();
        let info = dir.join("node.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(&info) {
                if let Ok(e) = serde_json::from_str::<Endpoints>(&s) {
                    // A node.json left by a killed predecessor of this process has its pid.
                    if e.pid == pid {
                        let id = e.id.parse().expect("node.json id");
                        return NodeProc {
                            dir: dir.to_path_buf(),
                            log,
                            id,
                            addr: e.addr,
                            child: Some(child),
                            frozen: false,
                        };
                    }
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "node {index} exited before serving ({status}):\n{}",
                    tail(&log, 40)
                );
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {index} did not serve within 30 s:\n{}",
                    tail(&log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a new node that joins through a running one (or starts the ring).
    /// Returns its index.
    pub async fn add_node(&mut self) -> usize {
        let index = self.nodes.len();
        let dir = self.root().join(format!("node-{index}"));
        // Through the newest member: joins go through different nodes, not always the first.
        let join = self.live().last().map(|i| self.nodes[*i].addr.clone());
        let node = self
            .spawn(index, &dir, "127.0.0.1:0", join.as_deref())
            .await;
        self.nodes.push(node);
        index
    }

    /// SIGSTOP: the node hangs (its connections stay open, nothing answers), which the
    /// ring must treat as a failure. Frozen nodes are not [`Cluster::live`].
    pub fn freeze(&mut self, i: usize) {
        let pid = self.nodes[i].pid().expect("node runs") as i32;
        signal(pid, libc::SIGSTOP);
        self.nodes[i].frozen = true;
    }

    /// SIGCONT: the frozen node carries on where it stopped.
    pub fn thaw(&mut self, i: usize) {
        let pid = self.nodes[i].pid().expect("node runs") as i32;
        signal(pid, libc::SIGCONT);
        self.nodes[i].frozen = false;
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].frozen = false;
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: a graceful leave. Waits (bounded) for the process to exit and returns
    /// whether it exited successfully.
    pub async fn terminate(&mut self, i: usize, timeout: Duration) -> bool {
        let Some(mut child) = self.nodes[i].child.take() else {
            return true;
        };
        let pid = child.id() as i32;
        signal(pid, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {i} did not exit within {timeout:?} of SIGTERM:\n{}",
                    tail(&self.nodes[i].log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts a stopped node again on its data dir and its old port, joining through a
    /// running node.
    pub async fn restart(&mut self, i: usize) {
        assert!(!self.nodes[i].is_running(), "node {i} still runs");
        let listen = format!("127.0.0.1:{}", self.nodes[i].port());
        let dir = self.nodes[i].dir.clone();
        let join = self.live().first().map(|j| self.nodes[*j].addr.clone());
        let node = self.spawn(i, &dir, &listen, join.as_deref()).await;
        self.nodes[i] = node;
    }

    pub async fn request(&self, addr: &str, req: Request) -> Result<Response, String> {
        self.net
            .request(addr, req, RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn state(&self, addr: &str) -> Result<NodeState, String> {
        match self.request(addr, Request::GetState).await? {
            Response::State(s) => Ok(s),
            other => Err(format!("{addr} answered GetState with {other:?}")),
        }
    }

    /// Every key a node holds, paging through ListKeys.
    pub async fn keys_of(&self, addr: &str) -> Result<Vec<KeyInfo>, String> {
        list_keys(&self.net, addr).await
    }

    /// Ids of the running nodes, sorted: the ring as it should be.
    pub fn sorted_live_ids(&self) -> Vec<Id> {
        let mut ids: Vec<Id> = self.live().into_iter().map(|i| self.nodes[i].id).collect();
        ids.sort();
        ids
    }

    /// Ok when every running node's successor and predecessor are its neighbours in
    /// sorted id order.
    pub async fn check_converged(&self) -> Result<(), String> {
        let ids = self.sorted_live_ids();
        let n = ids.len();
        for i in self.live() {
            let node = &self.nodes[i];
            let st = self.state(&node.addr).await?;
            let pos = ids.iter().position(|x| *x == node.id).expect("live id");
            let (want_succ, want_pred) = (ids[(pos + 1) % n], ids[(pos + n - 1) % n]);
            let succ = st.successors.first().map(|p| p.id);
            if n > 1 && succ != Some(want_succ) {
                return Err(format!("node {i}: successor {succ:?}, want {want_succ:?}"));
            }
            let pred = st.predecessor.as_ref().map(|p| p.id);
            if n > 1 && pred != Some(want_pred) {
                return Err(format!(
                    "node {i}: predecessor {pred:?}, want {want_pred:?}"
                ));
            }
            // The whole successor list: the next nodes in id order, no dead or missing
            // ones, as long as the ring allows (list length: max(8, R + 1) by default).
            let want_len = (n - 1).min(8.max(self.opts.replicas + 1));
            let want: Vec<Id> = (1..=want_len).map(|k| ids[(pos + k) % n]).collect();
            let got: Vec<Id> = st.successors.iter().map(|p| p.id).collect();
            if n > 1 && got != want {
                return Err(format!("node {i}: successor list {got:?}, want {want:?}"));
            }
        }
        Ok(())
    }

    pub async fn wait_converged(&self) {
        wait_until("the ring to converge", SETTLE, || self.check_converged()).await;
    }

    /// key -> indices of the running nodes holding it (with each one's info).
    pub async fn holders(&self) -> Result<BTreeMap<Id, Vec<(usize, KeyInfo)>>, String> {
        let mut out: BTreeMap<Id, Vec<(usize, KeyInfo)>> = BTreeMap::new();
        for i in self.live() {
            for k in self.keys_of(&self.nodes[i].addr).await? {
                out.entry(k.key).or_default().push((i, k));
            }
        }
        Ok(out)
    }

    /// The running nodes that should hold `key`: its successor and the next R-1.
    pub fn rightful_holders(&self, key: &Id) -> Vec<Id> {
        let ids = self.sorted_live_ids();
        rightful(&ids, key, self.opts.replicas)
    }

    /// Ok when every key in `expected` is held by every one of its rightful holders
    /// among the running nodes, at the newest version seen for it.
    pub async fn check_placed(&self, expected: &BTreeSet<Id>) -> Result<(), String> {
        let holders = self.holders().await?;
        let index_of: BTreeMap<Id, usize> = self
            .live()
            .into_iter()
            .map(|i| (self.nodes[i].id, i))
            .collect();
        for key in expected {
            let have = holders.get(key).cloned().unwrap_or_default();
            let newest = have.iter().map(|(_, k)| k.version).max().unwrap_or(0);
            for want in self.rightful_holders(key) {
                let i = index_of[&want];
                if !have.iter().any(|(j, k)| *j == i && k.version == newest) {
                    return Err(format!(
                        "key {key:?} (v{newest}) missing on node {i}; held by {:?}",
                        have.iter()
                            .map(|(j, k)| (*j, k.version))
                            .collect::<Vec<_>>()
                    ));
                }
            }
        }
        Ok(())
    }

    pub async fn wait_placed(&self, expected: &BTreeSet<Id>) {
        wait_until("every key on its rightful holders", SETTLE, || {
            self.check_placed(expected)
        })
        .await;
    }

    /// Every key held anywhere in the cluster now.
    pub async fn all_keys(&self) -> BTreeSet<Id> {
        self.holders()
            .await
            .expect("list keys")
            .into_keys()
            .collect()
    }

    /// A client of the ring through a running node.
    pub async fn client(&self) -> Arc<Client> {
        self.client_with(|_| {}).await
    }

    pub async fn client_with(&self, tune: impl FnOnce(&mut ClientConfig)) -> Arc<Client> {
        let mut cfg = ClientConfig::new(self.seed());
        cfg.op_timeout = Duration::from_secs(30);
        tune(&mut cfg);
        Client::connect(cfg).await.expect("client connects")
    }

    /// The tail of every node's log, for failure reports.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            out.push_str(&format!(
                "----- node {i} {} {:?} -----\n{}\n",
                n.addr,
                n.id,
                tail(&n.log, 30)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
            // CHORDFS_TEST_KEEP=1 keeps a failed test's data dirs and logs for a look.
            if std::env::var_os("CHORDFS_TEST_KEEP").is_some() {
                let dir = std::mem::replace(&mut self.root, tempfile::tempdir().expect("temp dir"))
                    .keep();
                eprintln!("kept {}", dir.display());
            }
        }
    }
}

/// The first `r` ids at or after `key` in ring order (the ring's own placement rule).
pub fn rightful(sorted: &[Id], key: &Id, r: usize) -> Vec<Id> {
    chordfs::ring::placement::holders(sorted, key, r)
        .copied()
        .collect()
}

/// The owner of `key` among sorted ids: the first id >= key, wrapping.
pub fn owner(sorted: &[Id], key: &Id) -> Id {
    *chordfs::ring::placement::owner(sorted, key).expect("a ring of at least one node")
}

pub async fn list_keys(net: &TcpTransport, addr: &str) -> Result<Vec<KeyInfo>, String> {
    const PAGE: u32 = 10_000;
    let mut out: Vec<KeyInfo> = Vec::new();
    // Bounded: a million keys is far more than any test stores.
    for _ in 0..100 {
        let after = out.last().map(|k| k.key);
        let resp = net
            .request(addr, Request::ListKeys { after, limit: PAGE }, RPC_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        match resp {
            Response::Keys(page) => {
                let done = page.len() < PAGE as usize;
                out.extend(page);
                if done {
                    return Ok(out);
                }
            }
            other => return Err(format!("{addr} answered ListKeys with {other:?}")),
        }
    }
    Err(format!("{addr}: too many keys to list"))
}

/// `len` pseudo-random bytes from `seed` (cheap, reproducible).
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

pub async fn put_bytes(client: &Arc<Client>, path: &str, data: &[u8]) {
    let mut r = data;
    client
        .put_file(path, &mut r, 0o644, &|_| {})
        .await
        .unwrap_or_else(|e| panic!("put {path}: {e}"));
}

pub async fn get_bytes(client: &Arc<Client>, path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client
        .get_file(path, &mut out, &|_| {})
        .await
        .unwrap_or_else(|e| panic!("get {path}: {e}"));
    out
}

/// Asserts equality of two byte strings without printing megabytes on failure.
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        let at = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: {} bytes read, {} written, first difference at {at}",
            got.len(),
            want.len()
        );
    }
}

fn signal(pid: i32, sig: i32) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) on a pid this harness spawned and has not reaped yet.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// The child gets SIGKILL if the test process dies without running destructors (a
/// killed `cargo test`), so no node outlives its test.
pub fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    #[allow(unsafe_code)]
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// The last `lines` lines of a log file (empty when unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
