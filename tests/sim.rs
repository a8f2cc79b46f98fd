//! Deterministic simulation of the ring (see `chordfs::sim`): many seeds, each a random
//! schedule of joins, leaves, crashes, restarts, delay, loss and partitions, then the
//! invariants of a settled ring.
//!
//! `CHORDFS_SIM_SEEDS` (default 500, about 25 s in a debug build on two cores) seeds from
//! `CHORDFS_SIM_START` (default 0), within `CHORDFS_SIM_BUDGET_SECS` of wall time (default
//! 150; seeds not started by then are skipped, and the summary says so);
//! `CHORDFS_SIM_SEED` runs that one seed and prints its event log; `CHORDFS_SIM_FAULTS`
//! (e.g. `crashes,weather`) narrows the kinds of fault. `CHORDFS_SIM_TRACES=FILE` writes
//! one line per seed (`seed trace-hash checks`) to FILE: two builds that give the same
//! file behave the same on those seeds (how a change that only moves code is checked).

use chordfs::sim::{run_seed, run_seed_with, Faults, Outcome};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn faults() -> Faults {
    match std::env::var("CHORDFS_SIM_FAULTS") {
        Ok(s) => Faults::parse(&s).expect("CHORDFS_SIM_FAULTS"),
        Err(_) => Faults::ALL,
    }
}

/// Runs `seeds` on a few threads; each seed is single-threaded and deterministic. No
/// seed starts after `budget`.
fn run_many(seeds: Vec<u64>, faults: Faults, budget: Duration) -> Vec<Outcome> {
    let started = Instant::now();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(1, 4);
    let next = Arc::new(AtomicU64::new(0));
    let seeds = Arc::new(seeds);
    let out = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, seeds, out) = (next.clone(), seeds.clone(), out.clone());
            std::thread::spawn(move || loop {
                let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(k) else { return };
                if started.elapsed() > budget {
                    return;
                }
                let o = run_seed_with(seed, faults);
                if !o.passed() {
                    eprintln!("{}", o.report());
                }
                out.lock().unwrap().push(o);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a simulation thread panicked");
    }
    let mut v = std::mem::take(&mut *out.lock().unwrap());
    v.sort_by_key(|o| o.seed);
    v
}

/// Seeds that fail on bugs found by this simulation and not fixed yet (open under the
/// faults issue). They still run and are reported every time; any other failing seed
/// fails the test.
///
/// (none at present)
const KNOWN_OPEN: &[u64] = &[];

#[test]
fn seeds_hold_the_invariants() {
    let started = Instant::now();
    if let Some(seed) = env_u64("CHORDFS_SIM_SEED") {
        let o = run_seed_with(seed, faults());
        for e in &o.events {
            println!("  {e}");
        }
        println!("{}", o.summary());
        assert!(o.passed(), "{}", o.report());
        return;
    }
    let n = env_u64("CHORDFS_SIM_SEEDS").unwrap_or(500);
    let start = env_u64("CHORDFS_SIM_START").unwrap_or(0);
    let budget = Duration::from_secs(env_u64("CHORDFS_SIM_BUDGET_SECS").unwrap_or(150));
    let outcomes = run_many((start..start + n).collect(), faults(), budget);
    if outcomes.len() < n as usize {
        println!(
            "sim: the {} s budget ran out after {} of {n} seeds",
            budget.as_secs(),
            outcomes.len()
        );
    }
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.passed())
        .map(|o| o.seed)
        .collect();
    let checks: u64 = outcomes.iter().map(|o| o.checks).sum();
    let excused: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.notes.is_empty())
        .map(|o| o.seed)
        .collect();
    let sim_s: u64 = outcomes.iter().map(|o| o.sim_ms).sum::<u64>() / 1000;
    if let Ok(path) = std::env::var("CHORDFS_SIM_TRACES") {
        let lines: String = outcomes
            .iter()
            .map(|o| format!("{} {:016x} {}\n", o.seed, o.trace_hash, o.checks))
            .collect();
        std::fs::write(&path, lines).expect("CHORDFS_SIM_TRACES: write the trace file");
    }
    println!(
        "sim summary: faults {}, {} seeds from {start}, {checks} invariant checks, {sim_s} simulated s in {:.1} s, {} failed: {failed:?}; split-brain record conflicts (excused) in {excused:?}",
        faults().name(),
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    let (known, new): (Vec<u64>, Vec<u64>) = failed.iter().partition(|s| KNOWN_OPEN.contains(s));
    if !known.is_empty() {
        println!(
            "sim: known open bugs still fail seeds {known:?} (see KNOWN_OPEN in tests/sim.rs)"
        );
    }
    assert!(
        new.is_empty(),
        "seeds {new:?} failed; replay one with CHORDFS_SIM_SEED=<seed> cargo test --test sim -- --nocapture"
    );
}

#[test]
fn a_seed_replays_exactly() {
    let seed = env_u64("CHORDFS_SIM_SEED").unwrap_or(7);
    let a = run_seed(seed);
    let b = run_seed(seed);
    assert_eq!(a.events, b.events, "same seed, same event log");
    assert_eq!(
        a.trace_hash, b.trace_hash,
        "same seed, same messages and fates"
    );
    assert_ne!(run_seed(seed + 1).trace_hash, a.trace_hash);
}
