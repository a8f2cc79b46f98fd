//! The `chordfs` command line, end to end against a real ring: put/get/ls/rm/status,
//! `--help` everywhere, `$CHORDFS_RING`, and clear failures (missing file, no ring).

mod common;

use common::{random_bytes, Cluster, Opts};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Most a CLI call may take before the test calls it hung.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `chordfs args...` with `envs`, bounded in time; `$CHORDFS_RING` is unset unless
/// given.
fn chordfs(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(common::bin());
    cmd.args(args)
        .env_remove("CHORDFS_RING")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn chordfs");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(CLI_TIMEOUT) {
        Ok(out) => out.expect("wait for chordfs"),
        Err(_) => {
            #[allow(unsafe_code)]
            // SAFETY: kill(2) on our own child, not reaped yet (its waiter is still waiting).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            panic!("chordfs {args:?} did not finish within {CLI_TIMEOUT:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = chordfs(args, envs);
    assert!(
        out.status.success(),
        "chordfs {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs a command that must fail cleanly: non-zero exit, a message, no panic.
fn fails(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = chordfs(args, envs);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "chordfs {args:?} should fail; stdout: {}",
        text(&out.stdout)
    );
    assert_ne!(
        out.status.code(),
        Some(101),
        "chordfs {args:?} panicked: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "chordfs {args:?} panicked: {stderr}"
    );
    assert!(
        !stderr.trim().is_empty(),
        "chordfs {args:?} failed without a message"
    );
    stderr
}

#[test]
fn every_subcommand_has_help() {
    let top = ok(&["--help"], &[]);
    for sub in ["node", "mount", "put", "get", "ls", "rm", "status"] {
        assert!(top.contains(sub), "top-level help lists {sub}");
        let help = ok(&[sub, "--help"], &[]);
        assert!(help.contains("Usage"), "{sub} --help: {help}");
    }
    let help = ok(&["ls", "--help"], &[]);
    assert!(
        help.contains("--ring") && help.contains("CHORDFS_RING"),
        "ls --help names --ring and its env var"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_ls_rm_status_end_to_end() {
    let c = Cluster::start(3, Opts::default()).await;
    let ring = c.seed();
    let r = ring.as_str();
    let local = c.root().join("local");
    std::fs::create_dir_all(&local).unwrap();
    let src = local.join("a.bin");
    let data = random_bytes(700 * 1024 + 3, 31);
    std::fs::write(&src, &data).unwrap();
    let src_s = src.to_str().unwrap();

    ok(
        &[
            "put",
            "--ring",
            r,
            "--chunk-size",
            "65536",
            src_s,
            "/cli/dir/a.bin",
        ],
        &[],
    );
    let back = local.join("back.bin");
    ok(
        &["get", "--ring", r, "/cli/dir/a.bin", back.to_str().unwrap()],
        &[],
    );
    common::assert_same("get", &std::fs::read(&back).unwrap(), &data);
    let stdout = chordfs(&["get", "--ring", r, "/cli/dir/a.bin", "-"], &[]);
    assert!(stdout.status.success());
    common::assert_same("get to stdout", &stdout.stdout, &data);

    let listing = ok(&["ls", "--ring", r, "/cli/dir"], &[]);
    let line = listing
        .lines()
        .find(|l| l.ends_with(" a.bin"))
        .unwrap_or_else(|| panic!("ls: {listing}"));
    assert!(
        line.contains(&data.len().to_string()),
        "ls shows the size: {line}"
    );
    assert!(
        ok(&["ls", "--ring", r], &[])
            .lines()
            .any(|l| l.ends_with(" cli")),
        "ls / shows the directory"
    );
    // A directory as REMOTE_PATH: the file keeps its name inside it.
    ok(&["put", "--ring", r, src_s, "/cli/dir/"], &[]);

    // $CHORDFS_RING stands in for --ring.
    let env = [("CHORDFS_RING", r)];
    ok(&["put", src_s, "/cli/env.bin"], &env);
    assert!(ok(&["ls", "/cli"], &env)
        .lines()
        .any(|l| l.ends_with(" env.bin")));

    // status: one row per node, and --json parses.
    let plain = ok(&["status", "--ring", r], &[]);
    for n in &c.nodes {
        assert!(plain.contains(&n.addr), "status shows {}: {plain}", n.addr);
    }
    let rows: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--json"], &env)).expect("status --json parses");
    let rows = rows.as_array().expect("status --json is a list of rows");
    assert_eq!(rows.len(), c.nodes.len(), "one row per node: {rows:?}");
    for n in &c.nodes {
        let row = rows
            .iter()
            .find(|row| row["id"] == n.id.to_hex())
            .unwrap_or_else(|| panic!("no row for {}", n.addr));
        assert_eq!(row["addr"], n.addr.as_str());
        assert_eq!(row["reachable"], true);
    }

    // rm, then the file is gone and a get says so clearly.
    ok(&["rm", "--ring", r, "/cli/dir/a.bin"], &[]);
    assert!(!ok(&["ls", "--ring", r, "/cli/dir"], &[]).contains("a.bin"));
    let missing = local.join("missing.bin");
    let err = fails(
        &[
            "get",
            "--ring",
            r,
            "/cli/dir/a.bin",
            missing.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("no such file"), "get of a removed file: {err}");
    assert!(!missing.exists(), "a failed get leaves no file behind");
    let err = fails(&["rm", "--ring", r, "/cli/nope"], &[]);
    assert!(err.contains("no such file"), "rm of a missing file: {err}");
    let err = fails(&["ls", "--ring", r, "/cli/nope"], &[]);
    assert!(err.contains("no such file"), "ls of a missing path: {err}");
    let err = fails(&["rm", "--ring", r, "/cli"], &[]);
    assert!(
        err.contains("directory"),
        "rm of a directory without -r: {err}"
    );
    ok(&["rm", "--ring", r, "-r", "/cli"], &[]);
    assert!(!ok(&["ls", "--ring", r], &[]).contains("cli"));
}

#[test]
fn an_unreachable_ring_is_a_clear_error() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ring = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("x");
    std::fs::write(&f, b"x").unwrap();
    let fs = f.to_str().unwrap();
    for args in [
        vec!["ls", "--ring", &ring],
        vec!["status", "--ring", &ring],
        vec!["put", "--ring", &ring, fs, "/x"],
        vec!["get", "--ring", &ring, "/x", fs],
        vec!["rm", "--ring", &ring, "/x"],
    ] {
        let err = fails(&args, &[]);
        assert!(
            err.contains("unreachable") && err.contains(&ring),
            "chordfs {args:?}: {err}"
        );
    }
    // The same through the environment.
    let err = fails(&["ls"], &[("CHORDFS_RING", &ring)]);
    assert!(err.contains(&ring), "{err}");
}
