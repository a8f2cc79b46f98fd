//! In-process simulation of lookup path lengths on a converged ring of N nodes, driven by
//! the node's own lookup walk. Prints one JSON line: nodes, lookups, mean and p99 hops, and
//! the paper's ½·log2(N). Used by scripts/bench.sh.
//!
//! cargo run --release --example lookup_hops -- [NODES] [LOOKUPS]

use chordfs::id::Id;
use chordfs::ring::routing::ConvergedRing;

fn main() {
    let mut args = std::env::args().skip(1);
    let nodes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let lookups: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let ids: Vec<Id> = (0..nodes as u64)
        .map(|i| Id::hash(format!("node-{i}").as_bytes()))
        .collect();
    let ring = ConvergedRing::new(&ids, 8);
    let mut hops: Vec<u32> = (0..lookups as u64)
        .map(|k| {
            let key = Id::hash(format!("key-{k}").as_bytes());
            ring.lookup((k as usize * 7919) % nodes, &key).0
        })
        .collect();
    hops.sort_unstable();
    let mean = hops.iter().map(|h| *h as f64).sum::<f64>() / hops.len().max(1) as f64;
    let p99 = hops[((hops.len() as f64 * 0.99) as usize).min(hops.len() - 1)];
    println!(
        "{{\"nodes\": {nodes}, \"lookups\": {lookups}, \"mean_hops\": {mean:.3}, \"p99_hops\": {p99}, \"half_log2_n\": {:.3}}}",
        0.5 * (nodes as f64).log2()
    );
}
