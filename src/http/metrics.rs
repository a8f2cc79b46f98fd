//! `/metrics`: Prometheus text.

use super::*;

// GET /metrics

struct Metrics(String);

impl Metrics {
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.0, "# HELP chordfs_{name} {help}");
        let _ = writeln!(self.0, "# TYPE chordfs_{name} {kind}");
        let _ = writeln!(self.0, "chordfs_{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.one(name, "gauge", help, value);
    }

    fn counter(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.one(name, "counter", help, value);
    }
}

/// A Prometheus label value, escaped.
pub(super) fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

pub(super) async fn metrics(State(side): State<Sidecar>) -> impl IntoResponse {
    let s = status_of(&side);
    let r = &s.repair;
    let c = &s.counters;
    let mut m = Metrics(String::new());
    let _ = writeln!(m.0, "# HELP chordfs_info This node's identity.");
    let _ = writeln!(m.0, "# TYPE chordfs_info gauge");
    let _ = writeln!(
        m.0,
        "chordfs_info{{id=\"{}\",addr=\"{}\",version=\"{}\"}} 1",
        label(&s.id),
        label(&s.addr),
        label(s.version)
    );
    m.gauge(
        "uptime_seconds",
        "Seconds since the sidecar started.",
        s.uptime_secs,
    );
    m.counter("requests_total", "RPC requests answered.", c.requests);
    m.counter("chunk_puts_total", "Chunk writes received.", c.chunk_puts);
    m.counter("chunk_gets_total", "Chunk reads received.", c.chunk_gets);
    m.counter(
        "record_puts_total",
        "Record compare-and-sets received.",
        c.record_puts,
    );
    m.counter(
        "bad_requests_total",
        "Requests refused as malformed.",
        c.bad_requests,
    );
    m.counter("lookups_total", "Lookups this node completed.", c.lookups);
    m.counter(
        "lookup_hops_total",
        "Hops over all completed lookups.",
        c.lookup_hops,
    );
    m.counter(
        "corrupt_found_total",
        "Bad copies found on disk and dropped.",
        c.corrupt_found,
    );
    m.gauge("chunks", "Chunks stored here.", s.chunks);
    m.gauge("records", "Records stored here.", s.records);
    m.gauge("bytes", "Bytes stored here (chunks and records).", s.bytes);
    m.gauge(
        "primary_keys",
        "Keys held here as their primary.",
        s.primary_keys,
    );
    m.gauge(
        "replica_keys",
        "Keys held here as a replica.",
        s.replica_keys,
    );
    m.gauge(
        "disk_total_bytes",
        "Size of the data dir's filesystem.",
        s.disk_total,
    );
    m.gauge(
        "disk_free_bytes",
        "Free space on the data dir's filesystem.",
        s.disk_free,
    );
    m.gauge("replicas", "Copies kept of every key (R).", s.replicas);
    m.gauge(
        "successors",
        "Entries in the successor list.",
        s.successors.len(),
    );
    m.gauge(
        "fingers_distinct",
        "Distinct peers in the finger table.",
        s.fingers.len(),
    );
    m.gauge(
        "predecessor_known",
        "1 when the predecessor is known.",
        u8::from(s.predecessor.is_some()),
    );
    m.gauge(
        "share",
        "Fraction of the id circle this node is primary for.",
        s.share,
    );
    m.gauge(
        "leaving",
        "1 while the node hands its keys off to leave.",
        u8::from(s.leaving),
    );
    let st = &r.status;
    m.gauge(
        "repair_running",
        "1 while a repair pass runs.",
        u8::from(st.running),
    );
    m.gauge(
        "repair_progress",
        "Fraction of the current repair pass done.",
        r.progress,
    );
    m.counter("repair_passes_total", "Repair passes completed.", st.passes);
    m.gauge(
        "repair_pass_keys",
        "Keys to check in the current or last pass.",
        st.keys_total,
    );
    m.gauge(
        "repair_pass_keys_checked",
        "Keys checked so far in the pass.",
        st.keys_checked,
    );
    m.counter(
        "repair_keys_pushed_total",
        "Copies given to other nodes.",
        st.keys_pushed,
    );
    m.counter(
        "repair_bytes_pushed_total",
        "Bytes of copies given to other nodes.",
        st.bytes_pushed,
    );
    m.counter(
        "repair_keys_dropped_total",
        "Keys dropped here once held elsewhere.",
        st.keys_dropped,
    );
    m.gauge(
        "repair_under_replicated_keys",
        "Keys the last pass could not bring to R copies.",
        st.under_replicated,
    );
    m.gauge(
        "repair_last_pass_seconds",
        "Duration of the last repair pass.",
        st.last_pass_ms as f64 / 1000.0,
    );
    m.gauge(
        "repair_last_pass_failed",
        "1 when the last pass ended in an error.",
        u8::from(st.last_error.is_some()),
    );
    let gc = &s.gc;
    m.counter(
        "gc_runs_total",
        "Garbage-collection sweeps completed.",
        gc.runs,
    );
    m.counter(
        "gc_aborted_total",
        "Sweeps abandoned on an incomplete mark (nothing deleted).",
        gc.aborted,
    );
    m.counter(
        "gc_chunks_freed_total",
        "Chunks deleted here by garbage collection.",
        gc.chunks_freed,
    );
    m.counter(
        "gc_bytes_freed_total",
        "Bytes deleted here by garbage collection.",
        gc.bytes_freed,
    );
    m.gauge(
        "gc_running",
        "1 while a garbage-collection sweep runs.",
        u8::from(gc.running),
    );
    m.gauge(
        "gc_last_run_timestamp_seconds",
        "Unix time the last sweep ended (0: never).",
        gc.last_run.unwrap_or(0),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.0,
    )
}

// ---------------------------------------------------------------------------------
// GET / (the page)
