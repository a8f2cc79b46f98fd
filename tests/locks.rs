//! File locks across mounts: real nodes, two real mounts of one ring, and real
//! processes (tests/locktool.py) taking fcntl, OFD and flock locks as programs do, SQLite
//! among them. Every wait is bounded; no assertion depends on how fast anything is.

mod fsutil;

use fsutil::{mount_pids, wait_for, Mount, Ring};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/locktool.py");
/// The ring's lock lease in these tests (`--lock-lease-ms`): long enough that a
/// renewal every third of it gets through on a loaded machine, short enough that the
/// tests of dead holders wait seconds, not half a minute.
const LEASE: Duration = Duration::from_secs(10);
/// The bound of any one wait for a lock or a line (a fresh ring's grace period, one
/// lease, comes first).
const PATIENCE: Duration = Duration::from_secs(90);

fn ring() -> Ring {
    let lease = LEASE.as_millis().to_string();
    Ring::start_with(3, 2, &["--lock-lease-ms", &lease])
}

/// One locktool process: its stdout read line by line on a thread; killed on drop.
struct Tool {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    what: String,
}

impl Tool {
    fn start(args: &[&str]) -> Tool {
        let mut child = Command::new("python3")
            .arg(TOOL)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Tool {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            what: args.join(" "),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line within `limit`.
    fn next(&mut self, limit: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(limit).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Reads lines until one starts with `prefix` (within `limit`); returns it.
    fn expect(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(l) if l.starts_with(prefix) => return l,
                Some(_) => continue,
                None => panic!(
                    "`{}` said no {prefix:?} within {limit:?}; it said {:?}",
                    self.what, self.seen
                ),
            }
        }
    }

    /// Every line it says until it exits (within `limit`).
    fn rest(&mut self, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    out.push(l);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return out,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!(
                        "`{}` did not end within {limit:?}: {:?}",
                        self.what, self.seen
                    )
                }
            }
        }
    }

    /// Closes its stdin: a holder lets go (its process ends, closing the file).
    fn release(&mut self) {
        self.stdin.take();
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("`{}` did not end after its stdin closed", self.what);
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to tool");
        stdin.flush().expect("flush to tool");
    }

    fn signal(&self, sig: &str) {
        fsutil::ok(Command::new("kill").args([sig, &self.pid().to_string()]));
    }
}

impl Drop for Tool {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one locktool command to its end and returns its single answer line.
fn once(args: &[&str]) -> String {
    let mut t = Tool::start(args);
    let lines = t.rest(PATIENCE);
    assert_eq!(lines.len(), 1, "`{}` said {lines:?}", args.join(" "));
    lines[0].clone()
}

/// Repeats `once(args)` until it answers `want` (a lock freed asynchronously, by a
/// RELEASE the kernel sends after the holder's exit, or by a lapsed lease).
fn until(args: &[&str], want: &str) {
    wait_for(
        &format!("`{}` to say {want}", args.join(" ")),
        PATIENCE,
        || (once(args) == want).then_some(()),
    );
}

fn p(m: &Mount, rel: &str) -> String {
    m.path(rel).to_string_lossy().into_owned()
}

#[test]
fn exclusive_locks_across_mounts_keep_a_shared_counter_exact() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("counter"), b"0\n").unwrap();
    let rounds = 20;
    let mut tools: Vec<Tool> = [&m1, &m1, &m2, &m2]
        .iter()
        .map(|m| Tool::start(&["counter", &p(m, "counter"), &rounds.to_string()]))
        .collect();
    for t in &mut tools {
        t.expect("done", PATIENCE * 3);
    }
    // Every increment read the one before it: none was lost to two holders at once.
    for m in [&m1, &m2] {
        let got = std::fs::read_to_string(m.path("counter")).unwrap();
        assert_eq!(got.trim(), (rounds * 4).to_string());
    }
}

#[test]
fn byte_ranges_conflict_only_where_they_overlap_and_getlk_names_the_holder() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["hold", &f1, "0", "10", "w"]);
    let pid_a = a.expect("locked", PATIENCE);
    let pid_a = pid_a.split(' ').nth(1).unwrap().to_string();
    assert_eq!(
        once(&["try", &f2, "10", "10", "w"]),
        "ok",
        "disjoint ranges"
    );
    assert_eq!(once(&["try", &f2, "5", "10", "w"]), "busy", "overlap");
    assert_eq!(
        once(&["try", &f2, "9", "1", "r"]),
        "busy",
        "a read lock on a written byte"
    );
    assert_eq!(
        once(&["getlk", &f2, "5", "10", "w"]),
        format!("w 0 10 {pid_a}"),
        "F_GETLK reports the holder on the other mount"
    );
    assert_eq!(once(&["getlk", &f2, "10", "100", "w"]), "unlocked");
    // Two ranges held at once by two mounts.
    let mut b = Tool::start(&["hold", &f2, "10", "10", "w"]);
    b.expect("locked", PATIENCE);
    assert_eq!(once(&["try", &f1, "15", "1", "r"]), "busy");
    a.release();
    assert_eq!(
        once(&["try", &f2, "0", "10", "w"]),
        "ok",
        "freed by the close"
    );
    assert_eq!(
        once(&["try", &f2, "5", "10", "w"]),
        "busy",
        "b still holds 10..20"
    );
    b.release();
    assert_eq!(once(&["try", &f1, "0", "0", "w"]), "ok");
}

#[test]
fn shared_locks_coexist_and_keep_writers_out() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["hold", &f1, "0", "100", "r"]);
    a.expect("locked", PATIENCE);
    let mut b = Tool::start(&["hold", &f2, "0", "100", "r"]);
    b.expect("locked", PATIENCE);
    assert_eq!(once(&["try", &f2, "50", "1", "w"]), "busy");
    assert_eq!(once(&["try", &f1, "50", "1", "r"]), "ok");
    a.release();
    assert_eq!(once(&["try", &f1, "50", "1", "w"]), "busy", "b still reads");
    b.release();
    assert_eq!(once(&["try", &f1, "50", "1", "w"]), "ok");
}

#[test]
fn a_blocked_setlkw_waits_for_the_holder_and_a_signal_interrupts_it() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut holder = Tool::start(&["hold", &f1, "0", "0", "w"]);
    holder.expect("locked", PATIENCE);

    // A signal ends the wait with EINTR (it is sent until it lands inside the call: one
    // sent before would be handled and missed).
    let mut v = Tool::start(&["wait", &f2, "0", "0", "w"]);
    v.expect("waiting", PATIENCE);
    let start = Instant::now();
    let got = loop {
        v.signal("-USR1");
        if let Some(l) = v.next(Duration::from_millis(300)) {
            break l;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "no answer to signals: {:?}",
            v.seen
        );
    };
    assert_eq!(got, "errno EINTR");

    // The interrupted waiter holds nothing; a waiter behind the holder gets the lock
    // once it is released.
    let mut w = Tool::start(&["wait", &f2, "0", "0", "w"]);
    w.expect("waiting", PATIENCE);
    assert_eq!(
        once(&["try", &f1, "0", "0", "r"]),
        "busy",
        "the holder still holds it"
    );
    holder.release();
    w.expect("locked", PATIENCE);
    assert_eq!(
        once(&["try", &f1, "0", "0", "r"]),
        "busy",
        "the waiter holds it now"
    );
}

#[test]
fn flock_holds_across_mounts() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["flock", &f1, "ex"]);
    a.expect("locked", PATIENCE);
    assert_eq!(once(&["flock", &f2, "ex", "nb"]), "busy");
    assert_eq!(once(&["flock", &f2, "sh", "nb"]), "busy");
    a.release();
    // The kernel sends the RELEASE that drops a flock lock after the process ended.
    let mut b = Tool::start(&["flock", &f2, "sh"]);
    b.expect("locked", PATIENCE);
    let mut c = Tool::start(&["flock", &f1, "sh"]);
    c.expect("locked", PATIENCE);
    assert_eq!(
        once(&["flock", &f1, "ex", "nb"]),
        "busy",
        "two readers hold it"
    );
}

#[test]
fn ofd_locks_belong_to_the_open_file() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["hold", &f1, "0", "10", "w", "ofd"]);
    a.expect("locked", PATIENCE);
    assert_eq!(once(&["try", &f2, "0", "10", "w", "ofd"]), "busy");
    assert_eq!(
        once(&["try", &f2, "5", "1", "r"]),
        "busy",
        "OFD and POSIX locks meet"
    );
    assert_eq!(
        once(&["try", &f1, "5", "1", "w", "ofd"]),
        "busy",
        "another open, same mount"
    );
    assert_eq!(once(&["try", &f2, "10", "10", "w", "ofd"]), "ok");
    a.release();
    until(&["try", &f2, "0", "10", "w", "ofd"], "ok");
}

#[test]
fn a_killed_mount_loses_its_locks_within_the_lease() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"data").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["hold", &f1, "0", "0", "w"]);
    a.expect("locked", PATIENCE);
    assert_eq!(once(&["try", &f2, "0", "0", "w"]), "busy");
    let pids = mount_pids(&m1.dir);
    assert!(!pids.is_empty(), "the mount process of m1");
    for pid in pids {
        fsutil::ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    }
    drop(a);
    // Nobody releases it: the primary drops it when m1's lease lapses.
    let started = Instant::now();
    let mut w = Tool::start(&["wait", &f2, "0", "0", "w"]);
    w.expect("locked", PATIENCE);
    eprintln!(
        "the lock of the killed mount was free after {:?}",
        started.elapsed()
    );
}

#[test]
fn a_holder_whose_lease_lapsed_fails_its_next_write() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    std::fs::write(m1.path("f"), b"start\n").unwrap();
    let (f1, f2) = (p(&m1, "f"), p(&m2, "f"));
    let mut a = Tool::start(&["write", &f1]);
    a.expect("locked", PATIENCE);
    a.say("one");
    assert_eq!(a.expect("", PATIENCE), "wrote");
    // m1 stops answering (a paused machine, a cut cable) for longer than the lease.
    let pids = mount_pids(&m1.dir);
    for pid in &pids {
        fsutil::ok(Command::new("kill").args(["-STOP", &pid.to_string()]));
    }
    let mut b = Tool::start(&["wait", &f2, "0", "0", "w"]);
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        b.expect("locked", PATIENCE)
    }));
    for pid in &pids {
        fsutil::ok(Command::new("kill").args(["-CONT", &pid.to_string()]));
    }
    got.expect("m2 takes the lock once m1's lease lapsed");
    // Back, m1's writer learns that it lost the lock instead of writing under b's.
    a.say("two");
    assert_eq!(a.expect("", PATIENCE), "errno EIO");
    let seen = std::fs::read_to_string(m2.path("f")).unwrap();
    assert!(
        seen.starts_with("one"),
        "the write made under the lock stays: {seen:?}"
    );
}

#[test]
fn sqlite_on_two_mounts_keeps_every_committed_row() {
    let ring = ring();
    let (m1, m2) = (Mount::new(ring.addr(), ""), Mount::new(ring.addr(), ""));
    let (d1, d2) = (p(&m1, "db.sqlite"), p(&m2, "db.sqlite"));
    assert_eq!(once(&["create", &d1]), "created");
    let rows = 25;
    let mut writers: Vec<Tool> = [(&d1, "a"), (&d1, "b"), (&d2, "c"), (&d2, "d")]
        .iter()
        .map(|(db, w)| Tool::start(&["sqlite", db, w, &rows.to_string()]))
        .collect();
    let mut committed = BTreeSet::new();
    let mut retries = 0;
    for w in &mut writers {
        for line in w.rest(PATIENCE * 4) {
            if let Some(row) = line.strip_prefix("row ") {
                committed.insert(row.to_string());
            } else if line.starts_with("retry") {
                retries += 1;
            }
        }
    }
    eprintln!("{} rows committed, {retries} retries", committed.len());
    assert_eq!(committed.len(), rows * 4, "every writer finished its rows");
    for db in [&d1, &d2] {
        let mut check = Tool::start(&["check", db]);
        let lines = check.rest(PATIENCE);
        assert_eq!(
            lines.first().map(String::as_str),
            Some("integrity ok"),
            "{lines:?}"
        );
        let ids: BTreeSet<String> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("id "))
            .map(str::to_string)
            .collect();
        assert_eq!(
            ids, committed,
            "every committed row, and only those, on {db}"
        );
    }
}
