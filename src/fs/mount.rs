//! Mounting: the foreground process (connect, mount, serve until unmounted) and the
//! background start (re-run ourselves with `--foreground`, return once mounted).

use super::ops::ChordFuse;
use super::options::{self, MountOptions};
use super::vfs::{Fs, FsConfig};
use crate::client::{Client, ClientConfig};
use fuser::{Config, MountOption, SessionACL};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::task::TaskTracker;

/// How long the background start waits for the mount to appear.
const MOUNT_WAIT: Duration = Duration::from_secs(60);
/// How long an unmount waits for operations in flight before the process ends.
const DRAIN_WAIT: Duration = Duration::from_secs(60);
/// FUSE worker threads.
const FUSE_THREADS: usize = 4;
/// How often the mount looks for open files whose write-back is overdue.
const WRITEBACK_CHECK_SECS: u64 = 30;

pub struct MountArgs {
    pub ring: String,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    pub foreground: bool,
    /// File holding the cluster secret (also `-o secret_file=PATH`).
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}")]
    Options(String),
    #[error("mountpoint {path}: {reason}")]
    Mountpoint { path: String, reason: String },
    #[error("cannot reach the ring at {ring}: {reason}")]
    Ring { ring: String, reason: String },
    #[error("mounting failed: {0}")]
    Mount(#[from] std::io::Error),
    #[error("{0}")]
    Background(String),
}

/// `chordfs mount`: mounts and serves (foreground), or starts a background process
/// and returns once the filesystem is mounted.
pub fn run(args: MountArgs) -> Result<(), MountError> {
    let opts = options::parse(&args.options).map_err(MountError::Options)?;
    let ring = opts.ring.clone().unwrap_or_else(|| args.ring.clone());
    let mountpoint =
        std::fs::canonicalize(&args.mountpoint).map_err(|e| MountError::Mountpoint {
            path: args.mountpoint.display().to_string(),
            reason: e.to_string(),
        })?;
    if !mountpoint.is_dir() {
        return Err(MountError::Mountpoint {
            path: mountpoint.display().to_string(),
            reason: "not a directory".into(),
        });
    }
    let secret_file = opts.secret_file.clone().or(args.secret_file.clone());
    if args.foreground {
        serve(&ring, &mountpoint, &opts, secret_file.as_deref())
    } else {
        start_background(&ring, &mountpoint, &args.options, secret_file.as_deref())
    }
}

fn log_path(mountpoint: &Path) -> PathBuf {
    if let Some(p) = std::env::var_os("CHORDFS_MOUNT_LOG") {
        return PathBuf::from(p);
    }
    let name: String = mountpoint
        .to_string_lossy()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    std::env::temp_dir().join(format!("chordfs-mount.{name}.log"))
}

/// How many mounts sit on `mountpoint` now (per /proc/self/mountinfo).
pub fn mounts_at(mountpoint: &Path) -> usize {
    let want = mountpoint.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

fn start_background(
    ring: &str,
    mountpoint: &Path,
    opts: &[String],
    secret_file: Option<&Path>,
) -> Result<(), MountError> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    let log = log_path(mountpoint);
    let log_file = std::fs::File::create(&log)?;
    let before = mounts_at(mountpoint);
    let mut cmd = Command::new(exe);
    cmd.arg("mount")
        .arg("--ring")
        .arg(ring)
        .arg(mountpoint)
        .arg("--foreground");
    if let Some(f) = secret_file {
        cmd.arg("--secret-file").arg(f);
    }
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    // Its own process group: a Ctrl-C meant for the caller does not end the mount.
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .process_group(0);
    let mut child = cmd.spawn()?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(MountError::Background(format!(
                "the mount process ended ({status}): {}",
                msg.trim()
            )));
        }
        if mounts_at(mountpoint) > before {
            return Ok(());
        }
        if started.elapsed() > MOUNT_WAIT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(MountError::Background(format!(
                "not mounted after {}s; see {}",
                MOUNT_WAIT.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fuse_config(ring: &str, opts: &MountOptions) -> Config {
    let mut mo = vec![
        MountOption::FSName(ring.to_string()),
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
        if opts.exec {
            MountOption::Exec
        } else {
            MountOption::NoExec
        },
    ];
    // A kernel option (fuser's `Subtype` is only passed to fusermount).
    if let Some(s) = &opts.subtype {
        mo.push(MountOption::CUSTOM(format!("subtype={s}")));
    }
    if opts.dev {
        mo.push(MountOption::Dev);
    }
    if opts.suid {
        mo.push(MountOption::Suid);
    }
    let mut cfg = Config::default();
    cfg.mount_options = mo;
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    cfg.n_threads = Some(FUSE_THREADS);
    cfg.clone_fd = true;
    cfg
}

/// The foreground mount: connect, mount, serve until unmounted, flush, return.
fn serve(
    ring: &str,
    mountpoint: &Path,
    opts: &MountOptions,
    secret_file: Option<&Path>,
) -> Result<(), MountError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let mut cfg = ClientConfig::new(ring);
    if let Some(f) = secret_file {
        let secret = crate::net::auth::read_secret_file(f).map_err(|e| {
            MountError::Options(format!("cannot read the secret file {}: {e}", f.display()))
        })?;
        cfg.secret = Some(Arc::from(secret));
    }
    if let Some(c) = opts.chunk_bytes {
        cfg.chunk_bytes = c;
    }
    if let Some(c) = opts.cache_bytes {
        cfg.cache_bytes = c;
    }
    cfg.op_timeout = opts.timeout;
    cfg.rpc_timeout = cfg.rpc_timeout.min(opts.timeout);
    let chunk_bytes = cfg.chunk_bytes;
    let client = rt
        .block_on(async {
            let c = Client::connect(cfg).await?;
            c.root().await?;
            Ok::<_, crate::client::ClientError>(c)
        })
        .map_err(|e| MountError::Ring {
            ring: ring.to_string(),
            reason: e.to_string(),
        })?;
    let fs = Arc::new(Fs::new(
        client,
        FsConfig {
            ttl: opts.attr_timeout,
            chunk_bytes,
        },
    ));
    let tracker = TaskTracker::new();
    let fuse = ChordFuse::new(fs.clone(), rt.handle().clone(), tracker.clone());
    let mut session = fuser::Session::new(fuse, mountpoint, &fuse_config(ring, opts))?;
    fs.set_notifier(session.notifier());
    let mut unmounter = session.unmount_callable();
    fs.start_locks(session.notifier(), rt.handle());
    tracing::info!("mounted {} at {}", ring, mountpoint.display());
    // Uploaded chunks never wait for their record longer than the write-back limit, so
    // the ring's garbage collection (which spares them for its grace period) keeps them.
    let periodic = fs.clone();
    rt.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(WRITEBACK_CHECK_SECS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            periodic.commit_overdue().await;
        }
    });
    let on_signal = fs.clone();
    rt.spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("signal: flushing, then unmounting");
        let failed = on_signal.flush_all().await;
        on_signal.release_all_locks().await;
        if let Err(e) = unmounter.unmount() {
            tracing::error!("unmount: {e}");
        }
        // Files still open keep a lazily detached mount alive; do not wait for them.
        tokio::time::sleep(Duration::from_secs(3)).await;
        std::process::exit(if failed == 0 { 0 } else { 1 });
    });
    let served = std::thread::Builder::new()
        .name("fuse-session".into())
        .spawn(move || session.run())?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("FUSE session thread panicked")));
    // Unmounted: finish the operations in flight, then commit whatever is still dirty.
    let failed = rt.block_on(async {
        tracker.close();
        let _ = tokio::time::timeout(DRAIN_WAIT, tracker.wait()).await;
        let failed = fs.flush_all().await;
        fs.release_all_locks().await;
        failed
    });
    tracing::info!("unmounted {}", mountpoint.display());
    served?;
    if failed > 0 {
        return Err(MountError::Background(format!(
            "{failed} files could not be flushed"
        )));
    }
    Ok(())
}
