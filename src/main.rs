//! The `chordfs` binary: argument parsing, then calls into the library.

use anyhow::{bail, Context, Result};
use chordfs::chord::NodeConfig;
use chordfs::client::{Client, ClientConfig, DEFAULT_RING};
use chordfs::proto::Kind;
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "chordfs",
    version,
    about = "A distributed file store on a Chord ring"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct RingArg {
    /// Any ring member, HOST:PORT.
    #[arg(long, env = "CHORDFS_RING", default_value = DEFAULT_RING)]
    ring: String,
    /// File holding the cluster secret, when the ring has one.
    #[arg(long, env = "CHORDFS_SECRET_FILE")]
    secret_file: Option<PathBuf>,
}

impl RingArg {
    /// The client configuration these flags describe.
    fn config(&self) -> Result<ClientConfig> {
        let mut cfg = ClientConfig::new(self.ring.clone());
        cfg.secret = read_secret(self.secret_file.as_deref())?;
        Ok(cfg)
    }
}

fn read_secret(path: Option<&std::path::Path>) -> Result<Option<std::sync::Arc<[u8]>>> {
    let Some(path) = path else { return Ok(None) };
    let bytes = chordfs::net::auth::read_secret_file(path)
        .with_context(|| format!("cannot read the secret file {}", path.display()))?;
    Ok(Some(std::sync::Arc::from(bytes)))
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a ring member (peer daemon).
    Node(NodeArgs),
    /// Mount the ring as a filesystem.
    Mount {
        #[command(flatten)]
        ring: RingArg,
        /// Where to mount.
        mountpoint: PathBuf,
        /// Mount options, comma separated (see README: ring=, chunk_size=, cache_size=,
        /// allow_other, timeout=, ...).
        #[arg(short = 'o')]
        options: Vec<String>,
        /// Stay in the foreground instead of returning once mounted.
        #[arg(long, short = 'f')]
        foreground: bool,
    },
    /// Store a local file on the ring (parent directories are created).
    Put {
        #[command(flatten)]
        ring: RingArg,
        local_file: PathBuf,
        /// Ring path; defaults to /NAME. A path ending in / is a directory.
        remote_path: Option<String>,
        /// Chunk size in bytes.
        #[arg(long)]
        chunk_size: Option<u32>,
    },
    /// Fetch a file from the ring.
    Get {
        #[command(flatten)]
        ring: RingArg,
        remote_path: String,
        /// Local file to write; `-` for standard output.
        local_file: PathBuf,
    },
    /// List a directory (or show one file).
    Ls {
        #[command(flatten)]
        ring: RingArg,
        remote_path: Option<String>,
    },
    /// Remove a file, or a directory with -r.
    Rm {
        #[command(flatten)]
        ring: RingArg,
        remote_path: String,
        /// Remove directories and their contents.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Free the chunks no file references any more: every node runs a
    /// garbage-collection sweep now (one after another), and prints what it freed.
    Gc {
        #[command(flatten)]
        ring: RingArg,
        /// Longest one node's sweep may take, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
        /// Machine-readable output (one JSON object per node).
        #[arg(long)]
        json: bool,
    },
    /// Show the whole ring, a row a node.
    Status {
        #[command(flatten)]
        ring: RingArg,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// Address to listen on for peers and clients (port 0: the OS chooses).
    #[arg(long, default_value = DEFAULT_RING)]
    listen: String,
    /// Data directory (created if missing).
    #[arg(long)]
    data: PathBuf,
    /// Any ring member to join through; without it, a new ring starts.
    #[arg(long)]
    join: Option<String>,
    /// Address for the HTTP status sidecar (keep it on loopback unless needed).
    #[arg(long)]
    http: Option<String>,
    /// Copies of every key.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Length of the successor list (at least replicas + 1).
    #[arg(long, default_value_t = 8)]
    successors: usize,
    /// Interval of stabilize, in ms.
    #[arg(long, default_value_t = 500)]
    stabilize_ms: u64,
    /// Interval of fix_fingers, in ms.
    #[arg(long, default_value_t = 1000)]
    fix_fingers_ms: u64,
    /// Interval of check_predecessor, in ms.
    #[arg(long, default_value_t = 1000)]
    check_predecessor_ms: u64,
    /// Interval of repair passes, in ms.
    #[arg(long, default_value_t = 5000)]
    repair_ms: u64,
    /// Timeout of every RPC to a peer, in ms.
    #[arg(long, default_value_t = 5000)]
    rpc_timeout_ms: u64,
    /// File holding the cluster secret: every peer, mount and CLI must know it.
    #[arg(long, env = "CHORDFS_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// Repair bandwidth cap, in MiB/s (0: no cap).
    #[arg(long, default_value_t = 256)]
    repair_mib_per_sec: u64,
    /// Interval of garbage-collection sweeps, in seconds (0: only on `chordfs gc`).
    #[arg(long, default_value_t = 600)]
    gc_interval_secs: u64,
    /// Unreferenced chunks younger than this many seconds are kept. It must exceed the
    /// longest `put` and the mount's write-back limit (5 min); see docs/design.md.
    #[arg(long, default_value_t = 3600)]
    gc_grace_secs: u64,
    /// How long a mount's file locks outlive its last lease renewal, in ms (a mount that
    /// dies frees its locks this long after); also the grace period of a node that took
    /// over a range, while holders reclaim their locks. See docs/locks.md.
    #[arg(long, default_value_t = chordfs::proto::lock::LEASE_DEFAULT_MS)]
    lock_lease_ms: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHORDFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,chordfs=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mount {
            ring,
            mountpoint,
            options,
            foreground,
        } => chordfs::fs::run(chordfs::fs::MountArgs {
            ring: ring.ring,
            mountpoint,
            options,
            foreground,
            secret_file: ring.secret_file,
        })
        .context("mount failed"),
        other => tokio::runtime::Runtime::new()?.block_on(run(other)),
    }
}

async fn run(cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Node(a) => node(a).await,
        Cmd::Put {
            ring,
            local_file,
            remote_path,
            chunk_size,
        } => {
            let mut cfg = cli_config(&ring)?;
            if let Some(c) = chunk_size {
                cfg.chunk_bytes = c;
            }
            let client = Client::connect(cfg).await?;
            let name = local_file
                .file_name()
                .and_then(|n| n.to_str())
                .context("local file has no name")?;
            let remote = match remote_path {
                None => format!("/{name}"),
                Some(p) if p.ends_with('/') => format!("{p}{name}"),
                Some(p) => match client.resolve(&p).await {
                    Ok(r) if r.inode.kind == Kind::Dir => {
                        format!("{}/{name}", p.trim_end_matches('/'))
                    }
                    _ => p,
                },
            };
            let file = tokio::fs::File::open(&local_file)
                .await
                .with_context(|| format!("cannot open {}", local_file.display()))?;
            let meta = file.metadata().await?;
            if meta.is_dir() {
                bail!("{} is a directory", local_file.display());
            }
            use std::os::unix::fs::PermissionsExt;
            let bar = bar(meta.len(), "put");
            let mut reader = tokio::io::BufReader::with_capacity(1 << 20, file);
            let done = client
                .put_file(
                    &remote,
                    &mut reader,
                    meta.permissions().mode() & 0o7777,
                    &|n| bar.inc(n),
                )
                .await?;
            bar.finish_and_clear();
            eprintln!(
                "stored {remote}: {} bytes in {} chunks",
                done.inode.size,
                done.inode.chunks.len()
            );
            Ok(())
        }
        Cmd::Get {
            ring,
            remote_path,
            local_file,
        } => {
            let client = Client::connect(cli_config(&ring)?).await?;
            let f = client.resolve(&remote_path).await?;
            if f.inode.kind == Kind::Dir {
                bail!("{remote_path} is a directory");
            }
            let bar = bar(f.inode.size, "get");
            let n = if local_file.as_os_str() == "-" {
                let mut out = tokio::io::stdout();
                client.download(&f.inode, &mut out, &|n| bar.inc(n)).await?
            } else {
                // Write beside the target and rename, so a failed get leaves no partial file.
                let tmp = local_file.with_extension("chordfs-partial");
                let file = std::fs::File::create(&tmp)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let res = client
                    .download_to_file(&f.inode, file, &|n| bar.inc(n))
                    .await;
                match res {
                    Ok(n) => {
                        tokio::fs::rename(&tmp, &local_file).await?;
                        n
                    }
                    Err(e) => {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return Err(e.into());
                    }
                }
            };
            bar.finish_and_clear();
            eprintln!("fetched {remote_path}: {n} bytes");
            Ok(())
        }
        Cmd::Ls { ring, remote_path } => {
            let client = Client::connect(ring.config()?).await?;
            let path = remote_path.unwrap_or_else(|| "/".into());
            let target = client.resolve(&path).await?;
            if target.inode.kind != Kind::Dir {
                println!("{}", ls_line(&target.inode, &path));
                return Ok(());
            }
            let names: Vec<(String, chordfs::proto::DirEntry)> = target
                .inode
                .entries
                .iter()
                .map(|(n, e)| (n.clone(), *e))
                .collect();
            let inodes =
                futures::future::join_all(names.iter().map(|(_, e)| client.get_inode(&e.id))).await;
            for ((name, _), ino) in names.iter().zip(inodes) {
                match ino {
                    Ok(r) => println!("{}", ls_line(&r.inode, name)),
                    Err(e) => println!("?????????? {name} ({e})"),
                }
            }
            Ok(())
        }
        Cmd::Rm {
            ring,
            remote_path,
            recursive,
        } => {
            let client = Client::connect(ring.config()?).await?;
            remove(&client, &remote_path, recursive).await
        }
        Cmd::Status { ring, json } => status(ring.config()?, json).await,
        Cmd::Gc {
            ring,
            timeout_secs,
            json,
        } => {
            gc(
                ring.config()?,
                Duration::from_secs(timeout_secs.max(1)),
                json,
            )
            .await
        }
        Cmd::Mount { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// A streaming command reads or writes each chunk once: a cache would only cost memory.
fn cli_config(ring: &RingArg) -> Result<ClientConfig> {
    let mut cfg = ring.config()?;
    cfg.cache_bytes = 0;
    Ok(cfg)
}

fn bar(len: u64, verb: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    bar.set_message(verb.to_string());
    bar
}

fn ls_line(ino: &chordfs::proto::Inode, name: &str) -> String {
    let t = match ino.kind {
        Kind::Dir => 'd',
        Kind::Symlink => 'l',
        Kind::Fifo => 'p',
        Kind::Socket => 's',
        Kind::CharDevice => 'c',
        Kind::BlockDevice => 'b',
        Kind::File => '-',
    };
    let mut perms = String::new();
    for shift in [6, 3, 0] {
        let bits = (ino.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let mut line = format!(
        "{t}{perms} {:>3} {:>5} {:>5} {:>12} {:>10} {name}",
        ino.nlink, ino.uid, ino.gid, ino.size, ino.mtime.secs
    );
    if ino.kind == Kind::Symlink {
        line.push_str(&format!(" -> {}", ino.target));
    }
    line
}

async fn remove(client: &Client, path: &str, recursive: bool) -> Result<()> {
    let (parent, name) = client.resolve_parent(path).await?;
    let entry = parent
        .inode
        .entries
        .get(name)
        .copied()
        .with_context(|| format!("no such file: {path}"))?;
    if entry.kind == Kind::Dir {
        if !recursive {
            bail!("{path} is a directory (use -r)");
        }
        let dir = client.get_inode(&entry.id).await?;
        for child in dir.inode.entries.keys() {
            Box::pin(remove(
                client,
                &format!("{}/{child}", path.trim_end_matches('/')),
                true,
            ))
            .await?;
        }
        client
            .unlink_child(&parent.id, name, true, |_| true)
            .await?;
    } else {
        client
            .unlink_child(&parent.id, name, false, |_| true)
            .await?;
    }
    Ok(())
}

async fn status(cfg: ClientConfig, json: bool) -> Result<()> {
    let client = Client::connect(cfg).await?;
    let view = client.view();
    let rows = chordfs::client::status::ring_status(&client, &view).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<22} {:<16} {:<16} {:>8} {:>8} {:>12} {:>6}",
        "ID", "ADDR", "PREDECESSOR", "SUCCESSOR", "CHUNKS", "RECORDS", "BYTES", "SHARE"
    );
    for r in &rows {
        println!(
            "{:<16} {:<22} {:<16} {:<16} {:>8} {:>8} {:>12} {:>5.1}%",
            &r.id[..16.min(r.id.len())],
            r.addr,
            r.predecessor
                .as_deref()
                .map(|s| &s[..16.min(s.len())])
                .unwrap_or("-"),
            r.successor
                .as_deref()
                .map(|s| &s[..16.min(s.len())])
                .unwrap_or("-"),
            r.chunks.map(|v| v.to_string()).unwrap_or("?".into()),
            r.records.map(|v| v.to_string()).unwrap_or("?".into()),
            r.bytes.map(|v| v.to_string()).unwrap_or("?".into()),
            r.share * 100.0
        );
    }
    println!("{} nodes, replicas {}", rows.len(), view.replicas);
    Ok(())
}

/// Asks every node, one after another, to sweep now.
async fn gc(cfg: ClientConfig, timeout: Duration, json: bool) -> Result<()> {
    let client = Client::connect(cfg).await?;
    let view = client.refresh_view().await?;
    let n = view.peers.len();
    let spinner = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    spinner.enable_steady_tick(Duration::from_millis(200));
    let (mut chunks, mut bytes, mut failed) = (0u64, 0u64, 0usize);
    for (i, p) in view.peers.iter().enumerate() {
        spinner.set_message(format!("sweeping {} ({}/{n})", p.addr, i + 1));
        let res = client.collect_garbage(&p.addr, timeout).await;
        let line = match res {
            Ok(r) => {
                chunks += r.chunks_freed + r.peer_chunks_freed;
                bytes += r.bytes_freed + r.peer_bytes_freed;
                if json {
                    serde_json::json!({"addr": p.addr, "ok": true, "report": r}).to_string()
                } else {
                    format!(
                        "{}: freed {} chunks ({}) here, {} chunks ({}) on other holders; \
                         {} referenced in the ring, {} kept as younger than the grace; {:.1} s",
                        p.addr,
                        r.chunks_freed,
                        human_bytes(r.bytes_freed),
                        r.peer_chunks_freed,
                        human_bytes(r.peer_bytes_freed),
                        r.referenced,
                        r.kept_young,
                        r.duration_ms as f64 / 1000.0
                    )
                }
            }
            Err(e) => {
                failed += 1;
                let why = e.to_string();
                if json {
                    serde_json::json!({"addr": p.addr, "ok": false, "error": why}).to_string()
                } else {
                    format!("{}: no sweep: {why}", p.addr)
                }
            }
        };
        spinner.suspend(|| println!("{line}"));
    }
    spinner.finish_and_clear();
    if !json {
        println!(
            "{n} nodes, {} swept: freed {chunks} chunks, {} (every copy counted)",
            n - failed,
            human_bytes(bytes)
        );
    }
    if failed > 0 {
        bail!("{failed} of {n} nodes did not sweep (nothing is deleted on an incomplete mark; try again once the ring is settled)");
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

async fn node(a: NodeArgs) -> Result<()> {
    let mut cfg = NodeConfig::new(a.listen.clone(), a.data.clone());
    cfg.replicas = a.replicas.max(1);
    cfg.successor_list_len = a.successors.max(cfg.replicas + 1);
    cfg.stabilize_every = Duration::from_millis(a.stabilize_ms.max(10));
    cfg.fix_fingers_every = Duration::from_millis(a.fix_fingers_ms.max(10));
    cfg.check_predecessor_every = Duration::from_millis(a.check_predecessor_ms.max(10));
    cfg.repair_every = Duration::from_millis(a.repair_ms.max(10));
    cfg.rpc_timeout = Duration::from_millis(a.rpc_timeout_ms.max(10));
    cfg.repair_bytes_per_sec = a.repair_mib_per_sec * 1024 * 1024;
    cfg.secret = read_secret(a.secret_file.as_deref())?;
    cfg.gc_every = Duration::from_secs(a.gc_interval_secs);
    cfg.gc_grace = Duration::from_secs(a.gc_grace_secs);
    cfg.lock_lease = Duration::from_millis(a.lock_lease_ms.max(100));
    if a.gc_grace_secs < chordfs::fs::WRITEBACK_MAX_SECS * 2 {
        eprintln!(
            "WARNING: --gc-grace-secs {} is shorter than twice the mount's write-back limit \
             ({} s): chunks of files still being written may be collected",
            a.gc_grace_secs,
            chordfs::fs::WRITEBACK_MAX_SECS
        );
    }
    let running = chordfs::daemon::start(chordfs::daemon::StartOptions {
        listen: a.listen,
        join: a.join,
        http: a.http,
        cfg,
    })
    .await?;
    let n = &running.node;
    eprintln!(
        "chordfs node {} listening on {}{} data {}",
        n.me().id,
        n.me().addr,
        running
            .http_addr
            .as_ref()
            .map(|h| format!(" status http://{h}/"))
            .unwrap_or_default(),
        a.data.display()
    );
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("leaving the ring: handing data to successors");
    running.leave().await;
    eprintln!("left");
    Ok(())
}
