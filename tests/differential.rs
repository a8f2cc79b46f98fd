//! The differential test: seeded random operation sequences (creates, writes at
//! offsets, truncates, renames, links, unlinks, mkdir, rmdir, symlinks, chmod,
//! extended attributes; several concurrent workers, two mounts) run on a chordfs ring
//! and on a local directory; every operation's outcome (errno included) and then the
//! trees must agree. A failing seed is cut down to a short sequence, printed with the
//! command that replays it.
//!
//! `cargo test --test differential` runs the CI seeds. More: `scripts/difftest.sh`,
//! or CHORDFS_DIFF_SEED (first seed; alone: that seed only), CHORDFS_DIFF_SEEDS (how
//! many), CHORDFS_DIFF_OPS (per seed), CHORDFS_DIFF_WORKERS, CHORDFS_DIFF_ONLY (the
//! indices a report names), CHORDFS_DIFF_SHRINK_SECS.

mod difftest;
mod fsutil;

use difftest::{generate, report, Config, Target};
use fsutil::{Mount, Ring};
use std::time::{Duration, Instant};

/// What `cargo test` runs: a few seeds, kept to about a minute here.
const CI_SEEDS: u64 = 4;
const CI_OPS: usize = 200;
/// attr_timeout of the test's mounts: short, so waits after removals stay short, yet
/// long enough that the caches it bounds are used all the time.
const TTL: Duration = Duration::from_millis(300);

#[test]
fn random_operation_sequences_match_a_local_directory() {
    let cfg = Config::from_env(CI_SEEDS, CI_OPS);
    let ring = Ring::start(3, 3);
    let opts = format!("chunk_size=65536,attr_timeout={}", TTL.as_secs_f64());
    let (a, b, cold) = (
        Mount::new(ring.addr(), &opts),
        Mount::new(ring.addr(), &opts),
        Mount::new(ring.addr(), &opts),
    );
    let local = tempfile::tempdir().unwrap();
    let t = Target::new(
        [a.dir.clone(), b.dir.clone()],
        cold.dir.clone(),
        local.path().to_path_buf(),
        TTL,
    );
    let mut failed = Vec::new();
    for seed in cfg.first_seed..cfg.first_seed + cfg.seeds {
        let started = Instant::now();
        let mut ops = generate(seed, cfg.ops, cfg.workers);
        if let Some(only) = &cfg.only {
            ops.retain(|(i, _)| only.contains(i));
        }
        let lines = t.run(&ops, cfg.workers);
        if lines.is_empty() {
            eprintln!(
                "seed {seed}: {} ops agree ({:.1} s)",
                ops.len(),
                started.elapsed().as_secs_f64()
            );
            continue;
        }
        eprintln!(
            "{}",
            report(&cfg, seed, &ops, &lines).replace("the sequence", "the whole sequence")
        );
        eprintln!("seed {seed}: cutting the sequence down");
        let (min, lines) = t.shrink(ops, cfg.workers, cfg.shrink_for);
        eprintln!("{}", report(&cfg, seed, &min, &lines));
        failed.push(seed);
    }
    assert!(
        failed.is_empty(),
        "seeds that failed: {failed:?} (reports above)"
    );
}
