//! `/`: the page for people, with the ring drawn as SVG.

use super::*;

/// `s` made safe inside HTML text and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `n` and `word`, plural when `n` is not 1 ("1 chunk", "2 chunks", "3 passes").
fn plural(n: u64, word: &str) -> String {
    match n {
        1 => format!("1 {word}"),
        _ if word.ends_with('s') => format!("{n} {word}es"),
        _ => format!("{n} {word}s"),
    }
}

/// Bytes in binary units, for people.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn percent(f: f64) -> String {
    if f > 0.0 && f < 0.001 {
        "<0.1%".into()
    } else {
        format!("{:.1}%", f * 100.0)
    }
}

/// A distinct color for the `i`-th node (golden-angle hues).
fn color(i: usize) -> String {
    format!("hsl({:.0},62%,48%)", (i as f64 * 137.508 + 210.0) % 360.0)
}

/// The point at `fraction` of the circle (0 at the top, clockwise) on radius `r`.
fn point(cx: f64, cy: f64, r: f64, fraction: f64) -> (f64, f64) {
    let a = fraction * std::f64::consts::TAU - std::f64::consts::FRAC_PI_2;
    (cx + r * a.cos(), cy + r * a.sin())
}

const SVG_W: f64 = 780.0;
const SVG_H: f64 = 580.0;
const CX: f64 = SVG_W / 2.0;
const CY: f64 = SVG_H / 2.0;
const RING_R: f64 = 175.0;
const BAR_MAX: f64 = 55.0;
/// Radius of the circle labels hug (outside the longest bar).
const LABEL_R: f64 = RING_R + 11.0 + BAR_MAX + 18.0;
/// Vertical room a two-line label needs.
const LABEL_GAP: f64 = 36.0;
/// Nodes are labelled in the picture up to this many (this node always is).
const MAX_LABELS: usize = 16;

/// A node's label in the picture: `(px, py)` is what it points at, `y` where it sits.
struct Label {
    y: f64,
    px: f64,
    py: f64,
    right: bool,
    id: String,
    counts: String,
    me: bool,
}

/// Spreads each side's labels vertically so that none overlap, keeping their order and
/// staying close to where they point.
fn place_labels(labels: &mut [Label]) {
    let (top, bottom) = (CY - LABEL_R - 8.0, CY + LABEL_R + 8.0);
    for right in [true, false] {
        let mut side: Vec<&mut Label> = labels.iter_mut().filter(|l| l.right == right).collect();
        side.sort_by(|a, b| a.py.total_cmp(&b.py));
        let mut prev = f64::NEG_INFINITY;
        for l in side.iter_mut() {
            l.y = l.py.max(prev + LABEL_GAP).max(top);
            prev = l.y;
        }
        let mut next = f64::INFINITY;
        for l in side.iter_mut().rev() {
            l.y = l.y.min(next - LABEL_GAP).min(bottom);
            next = l.y;
        }
    }
}

/// The ring as inline SVG: each node's range as a wedge and an arc on the circle, its
/// stored bytes as a bar outward from its place, and labels when they fit.
fn ring_svg(rows: &[NodeRow], me: &str, replicas: usize) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg viewBox="0 0 {SVG_W} {SVG_H}" width="100%" role="img" aria-label="The ring" xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif">"##
    );
    let _ = write!(
        svg,
        r##"<circle cx="{CX}" cy="{CY}" r="{RING_R}" fill="#f8fafc" stroke="#cbd5e1" stroke-width="14"/>"##
    );
    let n = rows.len();
    let max_bytes = rows
        .iter()
        .filter_map(|r| r.bytes)
        .max()
        .unwrap_or(0)
        .max(1);
    let total_bytes: u64 = rows.iter().filter_map(|r| r.bytes).sum();
    let total_chunks: u64 = rows.iter().filter_map(|r| r.chunks).sum();
    let frac = |hex: &str| hex.parse::<Id>().map(|id| id.fraction()).unwrap_or(0.0);
    // Ranges first (so dots and labels draw over them).
    for (i, r) in rows.iter().enumerate() {
        let end = frac(&r.id);
        let share = r.share.clamp(0.0, 1.0);
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let tip = format!(
            "{} {}: primary for {} of the ring",
            &r.id[..r.id.len().min(16)],
            esc(&r.addr),
            percent(share)
        );
        if share >= 0.9999 || n == 1 {
            let _ = write!(
                svg,
                r##"<circle cx="{CX}" cy="{CY}" r="{RING_R}" fill="{col}" fill-opacity="0.13" stroke="{col}" stroke-width="14"><title>{tip}</title></circle>"##
            );
            continue;
        }
        let start = end - share;
        let (x0, y0) = point(CX, CY, RING_R, start);
        let (x1, y1) = point(CX, CY, RING_R, end);
        let large = u8::from(share > 0.5);
        let _ = write!(
            svg,
            r##"<path d="M{CX},{CY} L{x0:.2},{y0:.2} A{RING_R},{RING_R} 0 {large} 1 {x1:.2},{y1:.2} Z" fill="{col}" fill-opacity="0.13"><title>{tip}</title></path>"##
        );
        let _ = write!(
            svg,
            r##"<path d="M{x0:.2},{y0:.2} A{RING_R},{RING_R} 0 {large} 1 {x1:.2},{y1:.2}" fill="none" stroke="{col}" stroke-width="14"{}><title>{tip}</title></path>"##,
            if r.reachable {
                ""
            } else {
                r#" stroke-dasharray="6 4""#
            }
        );
    }
    // Tick at 0 (the top of the circle).
    let _ = write!(
        svg,
        r##"<line x1="{CX}" y1="{}" x2="{CX}" y2="{}" stroke="#64748b" stroke-width="1.5"/><text x="{CX}" y="{}" text-anchor="middle" font-size="11" fill="#64748b">0</text>"##,
        CY - RING_R - 11.0,
        CY - RING_R + 11.0,
        CY - RING_R + 24.0
    );
    let mut labels: Vec<Label> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let f = frac(&r.id);
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let bytes = r.bytes.unwrap_or(0);
        let len = if bytes == 0 {
            0.0
        } else {
            6.0 + (BAR_MAX - 6.0) * bytes as f64 / max_bytes as f64
        };
        let (bx0, by0) = point(CX, CY, RING_R + 11.0, f);
        let (bx1, by1) = point(CX, CY, RING_R + 11.0 + len, f);
        let counts = match (r.chunks, r.bytes) {
            (Some(c), Some(b)) => format!("{} · {}", plural(c, "chunk"), human_bytes(b)),
            _ => "unreachable".to_string(),
        };
        let tip = format!("{} {}: {counts}", &r.id[..r.id.len().min(16)], esc(&r.addr));
        if len > 0.0 {
            let _ = write!(
                svg,
                r##"<line x1="{bx0:.2}" y1="{by0:.2}" x2="{bx1:.2}" y2="{by1:.2}" stroke="{col}" stroke-width="9" stroke-linecap="round"><title>{tip}</title></line>"##
            );
        }
        let (dx, dy) = point(CX, CY, RING_R, f);
        let is_me = r.id == me;
        let _ = write!(
            svg,
            r##"<circle cx="{dx:.2}" cy="{dy:.2}" r="{}" fill="{col}" stroke="{}" stroke-width="{}"><title>{tip}</title></circle>"##,
            if is_me { 11 } else { 8 },
            if is_me { "#0f172a" } else { "#fff" },
            if is_me { 3 } else { 2 }
        );
        if n <= MAX_LABELS || is_me {
            let (px, py) = point(CX, CY, RING_R + 11.0 + len + 6.0, f);
            labels.push(Label {
                y: py,
                px,
                py,
                right: f < 0.5,
                id: r.id[..r.id.len().min(8)].to_string(),
                counts,
                me: is_me,
            });
        }
    }
    place_labels(&mut labels);
    for l in &labels {
        // Labels hug a circle outside the bars, pushed apart vertically so none overlap.
        let dy = l.y - CY;
        let dx = (LABEL_R * LABEL_R - dy * dy).max(0.0).sqrt();
        let (lx, anchor, lead) = if l.right {
            (CX + dx + 4.0, "start", CX + dx)
        } else {
            (CX - dx - 4.0, "end", CX - dx)
        };
        let _ = write!(
            svg,
            r##"<line x1="{:.2}" y1="{:.2}" x2="{lead:.2}" y2="{:.2}" stroke="#94a3b8" stroke-width="1"/>"##,
            l.px, l.py, l.y
        );
        let _ = write!(
            svg,
            r##"<text x="{lx:.2}" y="{:.2}" text-anchor="{anchor}" font-size="14" fill="#0f172a"><tspan font-weight="{}" font-family="ui-monospace, monospace">{}</tspan>{}<tspan x="{lx:.2}" dy="16" fill="#475569">{}</tspan></text>"##,
            l.y - 2.0,
            if l.me { 700 } else { 600 },
            l.id,
            if l.me {
                r##"<tspan fill="#1d4ed8"> · this node</tspan>"##
            } else {
                ""
            },
            esc(&l.counts)
        );
    }
    // The middle: totals.
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="34" font-weight="700" fill="#0f172a">{n} node{}</text>"##,
        CY - 14.0,
        if n == 1 { "" } else { "s" }
    );
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="15" fill="#334155">{} · {}</text>"##,
        CY + 14.0,
        plural(total_chunks, "chunk"),
        human_bytes(total_bytes)
    );
    let _ = write!(
        svg,
        r##"<text x="{CX}" y="{}" text-anchor="middle" font-size="13" fill="#64748b">{replicas} cop{} of every key</text>"##,
        CY + 36.0,
        if replicas == 1 { "y" } else { "ies" }
    );
    svg.push_str("</svg>");
    svg
}

/// The ring as this node alone sees it, for the page when the ring cannot be walked.
fn local_rows(s: &StatusJson) -> Vec<NodeRow> {
    vec![NodeRow {
        id: s.id.clone(),
        addr: s.addr.clone(),
        predecessor: s.predecessor.as_ref().map(|p| p.id.to_hex()),
        successor: s.successors.first().map(|p| p.id.to_hex()),
        chunks: Some(s.chunks),
        records: Some(s.records),
        bytes: Some(s.bytes),
        share: s.share,
        reachable: true,
    }]
}

const PAGE_CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#0f172a;background:#f1f5f9}
header{background:#0f172a;color:#e2e8f0;padding:14px 24px;display:flex;align-items:baseline;gap:16px;flex-wrap:wrap}
header h1{margin:0;font-size:20px;color:#fff}
header .sub{color:#94a3b8}
main{padding:20px 24px;display:grid;grid-template-columns:minmax(0,1.6fr) minmax(340px,1fr);gap:20px;max-width:1500px}
@media (max-width:900px){main{grid-template-columns:1fr}}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(15,23,42,.12);padding:16px 18px}
.card h2{margin:0 0 10px;font-size:15px;text-transform:uppercase;letter-spacing:.04em;color:#475569}
.wide{grid-column:1/-1}
.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #e2e8f0;vertical-align:middle}
th{font-weight:600;color:#475569;font-size:12.5px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.kv td:first-child{color:#475569;width:40%}
.sw{display:inline-block;width:11px;height:11px;border-radius:3px;margin-right:6px;vertical-align:-1px}
.bar{background:#e2e8f0;border-radius:4px;height:9px;min-width:90px;overflow:hidden}
.bar>span{display:block;height:100%;border-radius:4px}
.me{background:#eff6ff}
.tag{display:inline-block;font-size:11px;padding:0 6px;border-radius:9px;background:#dbeafe;color:#1e40af;margin-left:6px}
.bad{color:#b91c1c}
.note{color:#64748b;font-size:12.5px}
.legend{display:flex;gap:2px 18px;flex-wrap:wrap;color:#475569;font-size:12.5px;margin-top:4px}
.legend b{color:#0f172a;font-weight:600}
a{color:#1d4ed8}
"#;

pub(super) async fn page(State(side): State<Sidecar>) -> Html<String> {
    let s = status_of(&side);
    let (rows, replicas, ring_error) = match side.ring_rows().await {
        Ok((rows, r)) if !rows.is_empty() => (rows, r, None),
        Ok(_) => (
            local_rows(&s),
            s.replicas,
            Some("the ring walk found no node".to_string()),
        ),
        Err(e) => (local_rows(&s), s.replicas, Some(e.1)),
    };
    Html(render_page(&s, &rows, replicas, ring_error.as_deref()))
}

fn render_page(
    s: &StatusJson,
    rows: &[NodeRow],
    replicas: usize,
    ring_error: Option<&str>,
) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let short = &s.id[..16];
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="{PAGE_REFRESH_SECS}"><title>chordfs {} · {}</title><style>{PAGE_CSS}</style></head><body>"#,
        &s.id[..8],
        esc(&s.addr)
    );
    let _ = write!(
        h,
        r#"<header><h1>chordfs node</h1><span class="mono">{}</span><span class="sub">{} · up {} · refreshes every {PAGE_REFRESH_SECS} s</span></header><main>"#,
        esc(&s.id),
        esc(&s.addr),
        human_duration(s.uptime_secs)
    );

    // The picture.
    let _ = write!(h, r#"<section class="card"><h2>The ring</h2>"#);
    if let Some(e) = ring_error {
        let _ = write!(
            h,
            r#"<p class="bad">Could not walk the ring ({}); showing this node only.</p>"#,
            esc(e)
        );
    }
    h.push_str(&ring_svg(rows, &s.id, replicas));
    let _ = write!(
        h,
        r#"<div class="legend"><span><b>Dot</b>: a node, placed by its id (0 at the top, clockwise)</span><span><b>Wedge</b>: the keys it is primary for</span><span><b>Bar</b>: the data it stores, primary and replica copies</span></div></section>"#
    );

    // This node.
    let _ = write!(
        h,
        r#"<section class="card"><h2>This node</h2><table class="kv">"#
    );
    let row = |h: &mut String, k: &str, v: String| {
        let _ = write!(h, "<tr><td>{k}</td><td>{v}</td></tr>");
    };
    let peer = |p: &Peer| {
        format!(
            r#"<span class="mono" title="{}">{}</span> {}"#,
            p.id.to_hex(),
            &p.id.to_hex()[..8],
            esc(&p.addr)
        )
    };
    row(
        &mut h,
        "Id",
        format!(r#"<span class="mono">{short}…</span>"#),
    );
    row(&mut h, "Address", esc(&s.addr));
    row(
        &mut h,
        "Predecessor",
        s.predecessor
            .as_ref()
            .map(peer)
            .unwrap_or_else(|| r#"<span class="note">unknown</span>"#.into()),
    );
    row(
        &mut h,
        "Successors",
        s.successors
            .iter()
            .map(peer)
            .collect::<Vec<_>>()
            .join("<br>"),
    );
    row(&mut h, "Distinct fingers", s.fingers.len().to_string());
    row(
        &mut h,
        "Primary for",
        format!("{} of the ring", percent(s.share)),
    );
    row(
        &mut h,
        "Stored",
        format!(
            "{}, {}, {} <span class=\"note\">({} primary, {} replica keys)</span>",
            plural(s.chunks, "chunk"),
            plural(s.records, "record"),
            human_bytes(s.bytes),
            s.primary_keys,
            s.replica_keys
        ),
    );
    row(
        &mut h,
        "Disk",
        format!(
            "{} free of {}",
            human_bytes(s.disk_free),
            human_bytes(s.disk_total)
        ),
    );
    let r = &s.repair;
    let repair_state = if r.status.running {
        format!(
            "running: {} of {} keys ({})",
            r.status.keys_checked,
            r.status.keys_total,
            percent(r.progress)
        )
    } else if r.status.passes == 0 {
        "no pass yet".to_string()
    } else {
        format!(
            "idle; {} done, the last took {} ms",
            plural(r.status.passes, "pass"),
            r.status.last_pass_ms
        )
    };
    row(
        &mut h,
        "Repair",
        format!(
            r#"{repair_state}<div class="bar" style="margin-top:4px"><span style="width:{:.1}%;background:#16a34a"></span></div><span class="note">{} keys pushed ({}), {} dropped, {} under-replicated</span>{}"#,
            r.progress * 100.0,
            r.status.keys_pushed,
            human_bytes(r.status.bytes_pushed),
            r.status.keys_dropped,
            r.status.under_replicated,
            r.status
                .last_error
                .as_deref()
                .map(|e| format!(r#"<br><span class="bad">last error: {}</span>"#, esc(e)))
                .unwrap_or_default()
        ),
    );
    let c = &s.counters;
    row(
        &mut h,
        "Requests",
        format!(
            "{} <span class=\"note\">({} chunk puts, {} chunk gets, {} record puts, {} bad)</span>",
            c.requests, c.chunk_puts, c.chunk_gets, c.record_puts, c.bad_requests
        ),
    );
    let mean = if c.lookups == 0 {
        0.0
    } else {
        c.lookup_hops as f64 / c.lookups as f64
    };
    row(
        &mut h,
        "Lookups",
        format!(
            "{} <span class=\"note\">({mean:.2} hops on average)</span>",
            c.lookups
        ),
    );
    if s.leaving {
        row(
            &mut h,
            "State",
            r#"<span class="bad">leaving: handing keys off</span>"#.into(),
        );
    }
    let _ = write!(
        h,
        r#"</table><p class="note">JSON: <a href="/status">/status</a> · <a href="/ring">/ring</a> · <a href="/files">/files</a> · <a href="/chunks">/chunks</a> · <a href="/metrics">/metrics</a></p></section>"#
    );

    // Every node's share.
    let total_bytes: u64 = rows.iter().filter_map(|r| r.bytes).sum();
    let _ = write!(
        h,
        r#"<section class="card wide"><h2>Each node's share</h2><table><tr><th>Node</th><th>Address</th><th class="num">Range</th><th class="num">Chunks</th><th class="num">Records</th><th class="num">Stored</th><th>Share of the data</th></tr>"#
    );
    for (i, r) in rows.iter().enumerate() {
        let is_me = r.id == s.id;
        let data_share = match r.bytes {
            Some(b) if total_bytes > 0 => b as f64 / total_bytes as f64,
            _ => 0.0,
        };
        let col = if r.reachable {
            color(i)
        } else {
            "#94a3b8".to_string()
        };
        let opt = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "?".into());
        let _ = write!(
            h,
            r#"<tr{}><td><span class="sw" style="background:{col}"></span><span class="mono">{}</span>{}{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td><div style="display:flex;align-items:center;gap:8px"><div class="bar" style="flex:1"><span style="width:{:.1}%;background:{col}"></span></div><span class="num" style="min-width:48px;text-align:right">{}</span></div></td></tr>"#,
            if is_me { r#" class="me""# } else { "" },
            &r.id[..r.id.len().min(16)],
            if is_me {
                r#"<span class="tag">this node</span>"#
            } else {
                ""
            },
            if r.reachable {
                ""
            } else {
                r#"<span class="tag bad">unreachable</span>"#
            },
            esc(&r.addr),
            percent(r.share),
            opt(r.chunks),
            opt(r.records),
            r.bytes.map(human_bytes).unwrap_or_else(|| "?".into()),
            data_share * 100.0,
            percent(data_share)
        );
    }
    let _ = write!(
        h,
        r#"</table><p class="note">Range: the fraction of the id circle a node is primary for. Stored counts include replica copies, so they add up to about {}× the data.</p></section></main></body></html>"#,
        replicas.min(rows.len()).max(1)
    );
    h
}

fn human_duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3600 => format!("{} min", s / 60),
        s if s < 86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        s => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::metrics::label;

    #[test]
    fn escapes_html_and_labels() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(300 * 1024 * 1024), "300 MiB");
        assert_eq!(plural(1, "chunk"), "1 chunk");
        assert_eq!(plural(0, "chunk"), "0 chunks");
        assert_eq!(plural(2, "pass"), "2 passes");
    }

    #[test]
    fn points_start_at_the_top_and_go_clockwise() {
        let (x, y) = point(0.0, 0.0, 10.0, 0.0);
        assert!(x.abs() < 1e-9 && (y + 10.0).abs() < 1e-9);
        let (x, y) = point(0.0, 0.0, 10.0, 0.25);
        assert!((x - 10.0).abs() < 1e-9 && y.abs() < 1e-9);
    }

    #[test]
    fn the_picture_has_a_wedge_per_node() {
        let rows: Vec<NodeRow> = [0x20u8, 0x80, 0xc0]
            .iter()
            .map(|b| {
                let mut a = [0u8; 20];
                a[0] = *b;
                NodeRow {
                    id: Id(a).to_hex(),
                    addr: format!("10.0.0.{b}:7400"),
                    predecessor: None,
                    successor: None,
                    chunks: Some(*b as u64),
                    records: Some(1),
                    bytes: Some(*b as u64 * 1000),
                    share: 0.25,
                    reachable: *b != 0xc0,
                }
            })
            .collect();
        let svg = ring_svg(&rows, &rows[0].id, 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(svg.matches(" Z\"").count(), 3);
        assert!(svg.contains("3 nodes"));
        assert!(
            svg.contains("stroke-dasharray"),
            "the unreachable node is dashed"
        );
    }
}
