//! The differential test's engine: generate a seeded sequence, run it on a chordfs
//! ring (two mounts, several concurrent workers) and on a local directory, compare
//! every operation's outcome and then the trees, and cut a failing sequence down.
//!
//! What the comparison may rely on is what the filesystem promises (see the
//! "Semantics" list of `src/fs/mod.rs`): a name created or a file closed on one mount
//! is seen by the other at once, a name removed there may be served here for up to
//! attr_timeout. So a worker whose last removal went through the other mount lets
//! attr_timeout pass before its next operation; nothing else waits.

#![allow(dead_code)]

pub mod gen;
pub mod ops;
pub mod rng;
pub mod snapshot;

use ops::{apply, Op, Outcome};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Slack on top of attr_timeout before a removal on one mount counts as seen by the
/// other (the kernel counts entry timeouts in jiffies).
const STALE_SLACK: Duration = Duration::from_millis(100);
/// Mismatch lines kept per run.
const MAX_LINES: usize = 40;

/// What to run, from the environment (CHORDFS_DIFF_*), with the CI defaults.
#[derive(Clone, Debug)]
pub struct Config {
    pub first_seed: u64,
    pub seeds: u64,
    pub ops: usize,
    pub workers: usize,
    /// Indices of the generated sequence to run alone (a replay of a shrunk failure).
    pub only: Option<Vec<usize>>,
    pub shrink_for: Duration,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(x) => Some(x),
        Err(_) => panic!("{name}={v:?} is not a valid value"),
    }
}

impl Config {
    pub fn from_env(seeds: u64, ops: usize) -> Config {
        let only = std::env::var("CHORDFS_DIFF_ONLY").ok().map(|v| {
            v.split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| {
                    s.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("CHORDFS_DIFF_ONLY: bad index {s:?}"))
                })
                .collect()
        });
        let first_seed = env("CHORDFS_DIFF_SEED").unwrap_or(1);
        // One seed given alone means that seed only.
        let default_seeds = if std::env::var("CHORDFS_DIFF_SEED").is_ok() {
            1
        } else {
            seeds
        };
        Config {
            first_seed,
            seeds: env("CHORDFS_DIFF_SEEDS").unwrap_or(default_seeds),
            ops: env("CHORDFS_DIFF_OPS").unwrap_or(ops),
            workers: env("CHORDFS_DIFF_WORKERS").unwrap_or(3).max(1),
            only,
            shrink_for: Duration::from_secs(env("CHORDFS_DIFF_SHRINK_SECS").unwrap_or(300)),
        }
    }

    pub fn replay_command(&self, seed: u64, keep: &[usize]) -> String {
        let idx: Vec<String> = keep.iter().map(|i| i.to_string()).collect();
        format!(
            "CHORDFS_DIFF_SEED={seed} CHORDFS_DIFF_OPS={} CHORDFS_DIFF_WORKERS={} \
             CHORDFS_DIFF_ONLY={} cargo test --test differential -- --nocapture",
            self.ops,
            self.workers,
            idx.join(",")
        )
    }
}

/// The sequence of a seed: each worker's operations, interleaved round robin (the
/// order in which a report lists them; workers run concurrently).
pub fn generate(seed: u64, ops: usize, workers: usize) -> Vec<(usize, Op)> {
    let scratch = tempfile::tempdir().expect("scratch dir");
    make_roots(scratch.path(), workers);
    let per = ops.div_ceil(workers);
    let lists: Vec<Vec<(usize, ops::OpKind)>> = (0..workers)
        .map(|w| gen::worker_ops(seed, w, per, scratch.path()))
        .collect();
    let mut out = Vec::new();
    for i in 0..per {
        for (w, l) in lists.iter().enumerate() {
            if let Some((mount, kind)) = l.get(i) {
                if out.len() < ops {
                    let op = Op {
                        worker: w,
                        mount: *mount,
                        kind: kind.clone(),
                    };
                    out.push((out.len(), op));
                }
            }
        }
    }
    out
}

fn make_roots(root: &Path, workers: usize) {
    std::fs::create_dir_all(root.join("shared")).expect("shared dir");
    for w in 0..workers {
        std::fs::create_dir_all(root.join(gen::roots(w)[0].as_str())).expect("worker dir");
    }
}

/// Where sequences run: two mounts of one ring, a third mount for a cold look at the
/// result, and a local directory.
pub struct Target {
    pub mounts: [PathBuf; 2],
    pub cold: PathBuf,
    pub local: PathBuf,
    pub ttl: Duration,
    runs: AtomicU64,
}

impl Target {
    pub fn new(mounts: [PathBuf; 2], cold: PathBuf, local: PathBuf, ttl: Duration) -> Target {
        check_local_xattrs(&local);
        Target {
            mounts,
            cold,
            local,
            ttl,
            runs: AtomicU64::new(0),
        }
    }

    /// Runs `ops` on fresh directories; returns what differed (empty: all agreed).
    pub fn run(&self, ops: &[(usize, Op)], workers: usize) -> Vec<String> {
        let run = format!("run{}", self.runs.fetch_add(1, Ordering::SeqCst));
        let ring_root = self.mounts[0].join(&run);
        let local_root = self.local.join(&run);
        std::fs::create_dir(&ring_root).expect("run dir on the mount");
        make_roots(&ring_root, workers);
        std::fs::create_dir(&local_root).expect("local run dir");
        make_roots(&local_root, workers);
        let mut lines: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let mine: Vec<&(usize, Op)> =
                        ops.iter().filter(|(_, op)| op.worker == w).collect();
                    let run = run.as_str();
                    s.spawn(move || self.worker(run, &mine))
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("worker panicked"))
                .collect()
        });
        // Every removal is now older than attr_timeout on every mount.
        std::thread::sleep(self.ttl + STALE_SLACK);
        let want = match snapshot::take(&local_root) {
            Ok(s) => s,
            Err(e) => panic!("reading the local tree {}: {e}", local_root.display()),
        };
        let views = [
            ("mount A", self.mounts[0].join(&run)),
            ("mount B", self.mounts[1].join(&run)),
            ("a fresh mount", self.cold.join(&run)),
        ];
        for (what, root) in views {
            match snapshot::take(&root) {
                Ok(got) => {
                    for d in snapshot::diff(&want, &got, MAX_LINES) {
                        lines.push(format!("tree through {what}: {d}"));
                    }
                }
                Err(e) => lines.push(format!("tree through {what}: cannot be read: {e}")),
            }
        }
        lines.truncate(MAX_LINES);
        lines
    }

    /// One worker's operations in order, each on its mount and then locally.
    fn worker(&self, run: &str, ops: &[&(usize, Op)]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut last_removal: [Option<Instant>; 2] = [None, None];
        for (i, op) in ops {
            if let Some(t) = last_removal[1 - op.mount] {
                let until = t + self.ttl + STALE_SLACK;
                if let Some(left) = until.checked_duration_since(Instant::now()) {
                    std::thread::sleep(left);
                }
            }
            let got = apply(&self.mounts[op.mount].join(run), &op.kind);
            let done = Instant::now();
            let want = apply(&self.local.join(run), &op.kind);
            if got != want {
                lines.push(format!("#{i} {op}: chordfs {got}, local {want}"));
            }
            if want != Outcome::Ok || !op.kind.removes_names() {
                continue;
            }
            last_removal[op.mount] = Some(done);
        }
        lines
    }

    /// Cuts `ops` down while the run still fails (delta debugging: drop a chunk, keep
    /// the rest when it still fails, halve the chunks when none can go), for at most
    /// `budget`. Each try runs on fresh directories.
    pub fn shrink(
        &self,
        mut ops: Vec<(usize, Op)>,
        workers: usize,
        budget: Duration,
    ) -> (Vec<(usize, Op)>, Vec<String>) {
        let start = Instant::now();
        let mut last = self.run(&ops, workers);
        if last.is_empty() {
            eprintln!("  the failure did not happen again on a second run (a race?)");
            return (ops, last);
        }
        let mut n = 2usize;
        let mut tries = 0;
        while ops.len() > 1 && start.elapsed() < budget {
            let chunk = ops.len().div_ceil(n);
            let mut cut = false;
            let parts = n;
            for c in 0..parts {
                let (lo, hi) = (c * chunk, ((c + 1) * chunk).min(ops.len()));
                if lo >= hi {
                    continue;
                }
                let cand: Vec<(usize, Op)> = ops[..lo].iter().chain(&ops[hi..]).cloned().collect();
                tries += 1;
                let lines = self.run(&cand, workers);
                if !lines.is_empty() {
                    eprintln!("  shrink: {} ops still fail (try {tries})", cand.len());
                    ops = cand;
                    last = lines;
                    n = (n - 1).max(2);
                    cut = true;
                    break;
                }
                if start.elapsed() >= budget {
                    break;
                }
            }
            if !cut {
                if n >= ops.len() {
                    break;
                }
                n = (n * 2).min(ops.len());
            }
        }
        if start.elapsed() >= budget {
            eprintln!("  shrink: stopped after {budget:?} ({tries} tries); not minimal");
        }
        (ops, last)
    }
}

/// The local directory must keep `user.*` attributes, or every xattr op would differ.
fn check_local_xattrs(dir: &Path) {
    let probe = dir.join(".xattr-probe");
    std::fs::write(&probe, b"").expect("probe file");
    let r = rustix::fs::setxattr(&probe, "user.probe", b"1", rustix::fs::XattrFlags::empty());
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = r {
        panic!(
            "{} does not keep user.* extended attributes ({e}): run the test with TMPDIR \
             on a filesystem that does (ext4, xfs, tmpfs)",
            dir.display()
        );
    }
}

/// The report of a failed seed: what differed, the sequence, how to replay it.
pub fn report(cfg: &Config, seed: u64, ops: &[(usize, Op)], lines: &[String]) -> String {
    let mut s = format!(
        "differential test: seed {seed} ({} ops, {} workers) failed:\n",
        cfg.ops, cfg.workers
    );
    for l in lines {
        s.push_str(&format!("  {l}\n"));
    }
    s.push_str(&format!("the sequence ({} ops):\n", ops.len()));
    for (i, op) in ops {
        s.push_str(&format!("  #{i} {op}\n"));
    }
    let keep: Vec<usize> = ops.iter().map(|(i, _)| *i).collect();
    s.push_str(&format!("replay: {}\n", cfg.replay_command(seed, &keep)));
    s
}
