//! The status sidecar, driven over real HTTP against an in-process node.

use chordfs::chord::NodeConfig;
use chordfs::client::{Client, ClientConfig};
use chordfs::daemon::{start, StartOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bare HTTP/1.1 GET: (status code, content type, body).
async fn get(addr: &str, path: &str) -> (u16, String, String) {
    request(addr, "GET", path).await
}

async fn request(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the sidecar");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(60), s.read_to_end(&mut raw))
        .await
        .expect("the sidecar answers in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut ctype = String::new();
    let mut chunked = false;
    for l in lines {
        let (k, v) = l.split_once(':').unwrap();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-type" => ctype = v.trim().to_string(),
            "transfer-encoding" => chunked = v.trim().eq_ignore_ascii_case("chunked"),
            _ => {}
        }
    }
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (code, ctype, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

async fn get_json(addr: &str, path: &str) -> Value {
    let (code, ctype, body) = get(addr, path).await;
    assert_eq!(code, 200, "{path}: {body}");
    assert!(ctype.starts_with("application/json"), "{path}: {ctype}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_shows_the_node_its_files_and_the_ring() {
    let dir = tempfile::tempdir().unwrap();
    let running = start(StartOptions {
        listen: "127.0.0.1:0".into(),
        join: None,
        http: Some("127.0.0.1:0".into()),
        cfg: NodeConfig::new(String::new(), dir.path().to_path_buf()),
    })
    .await
    .expect("node starts");
    let http = running.http_addr.clone().expect("sidecar address");
    let me = running.node.me().clone();

    // Before any file: the tree is empty, and reading it makes no root.
    let files = get_json(&http, "/files").await;
    assert_eq!(files.as_array().unwrap().len(), 0, "{files}");
    assert_eq!(running.node.store().keys().len(), 0, "/files wrote nothing");

    let mut cfg = ClientConfig::new(me.addr.clone());
    cfg.chunk_bytes = 64 * 1024;
    let client = Client::connect(cfg).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    client
        .put_file("/docs/hello.bin", &mut &data[..], 0o644, &|_| {})
        .await
        .unwrap();
    let ino = client.resolve("/docs/hello.bin").await.unwrap();
    let hashes: Vec<String> = ino.inode.chunks.iter().map(|k| k.to_hex()).collect();
    assert_eq!(hashes.len(), 4);

    // /status: who this node is.
    let st = get_json(&http, "/status").await;
    let id = st["id"].as_str().unwrap();
    assert_eq!(id, me.id.to_hex());
    assert!(id.len() == 40 && id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(st["addr"], me.addr.as_str());
    assert_eq!(st["successors"][0]["id"], id, "a lone node succeeds itself");
    assert!(st["fingers"].is_array());
    assert_eq!(st["replicas"], 3);
    assert_eq!(st["chunks"], 4);
    assert!(st["bytes"].as_u64().unwrap() >= data.len() as u64);
    assert!(st["repair"]["progress"].as_f64().is_some());

    // /chunks: every key, the file's chunks among them, all primary on a lone node.
    let ch = get_json(&http, "/chunks").await;
    let list = ch.as_array().unwrap();
    for h in &hashes {
        let e = list
            .iter()
            .find(|e| e["key"] == h.as_str())
            .unwrap_or_else(|| panic!("{h} in {ch}"));
        assert_eq!(e["kind"], "chunk");
        assert_eq!(e["role"], "primary");
        assert!(e["size"].as_u64().unwrap() > 0);
    }
    assert!(list
        .iter()
        .any(|e| e["kind"] == "record" && e["version"].as_u64().is_some()));
    let limited = get_json(&http, "/chunks?limit=2").await;
    assert_eq!(limited.as_array().unwrap().len(), 2);

    // /files: the file, its size and the chunks held here.
    let files = get_json(&http, "/files").await;
    let f = &files[0];
    assert_eq!(f["path"], "/docs/hello.bin", "{files}");
    assert_eq!(f["size"], data.len() as u64);
    let held: Vec<&str> = f["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["hash"].as_str().unwrap())
        .collect();
    assert_eq!(held, hashes);
    assert!(f["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["role"] == "primary"));
    assert_eq!(files.as_array().unwrap().len(), 1);

    // /ring: one node, this one, with its counts.
    let ring = get_json(&http, "/ring").await;
    let nodes = ring.as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{ring}");
    assert_eq!(nodes[0]["id"], id);
    assert_eq!(nodes[0]["addr"], me.addr.as_str());
    assert_eq!(nodes[0]["chunks"], 4);
    assert_eq!(nodes[0]["share"], 1.0);

    // /metrics: Prometheus text.
    let (code, ctype, body) = get(&http, "/metrics").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/plain"), "{ctype}");
    assert!(body.contains("# TYPE chordfs_chunks gauge"), "{body}");
    assert!(body.lines().any(|l| l == "chordfs_chunks 4"), "{body}");
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("chordfs_"), "{line}");
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    // /: a page with the ring drawn.
    let (code, ctype, body) = get(&http, "/").await;
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(body.contains("<svg"), "{body}");
    assert!(body.contains(&id[..16]));
    assert!(!body.contains("Could not walk the ring"), "{body}");

    // Unknown pages answer 404 in JSON.
    let (code, _, body) = get(&http, "/nope").await;
    assert_eq!(code, 404);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());
    let (code, _, body) = request(&http, "POST", "/status").await;
    assert_eq!(code, 405);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    running.stop().await;
}

async fn start_node(dir: &std::path::Path, join: Option<String>) -> chordfs::daemon::Running {
    start(StartOptions {
        listen: "127.0.0.1:0".into(),
        join,
        http: Some("127.0.0.1:0".into()),
        cfg: NodeConfig::new(String::new(), dir.to_path_buf()),
    })
    .await
    .expect("node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_show_each_other_and_split_the_roles() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_node(da.path(), None).await;
    let b = start_node(db.path(), Some(a.node.me().addr.clone())).await;
    let (ha, hb) = (a.http_addr.clone().unwrap(), b.http_addr.clone().unwrap());
    let (ida, idb) = (a.node.me().id.to_hex(), b.node.me().id.to_hex());

    // Wait for the ring to settle: each node the other's predecessor and successor.
    let settled = |st: &Value, other: &str| {
        st["predecessor"]["id"] == other && st["successors"][0]["id"] == other
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (sa, sb) = (
            get_json(&ha, "/status").await,
            get_json(&hb, "/status").await,
        );
        if settled(&sa, &idb) && settled(&sb, &ida) {
            let share = sa["share"].as_f64().unwrap() + sb["share"].as_f64().unwrap();
            assert!(
                (share - 1.0).abs() < 1e-9,
                "the shares cover the circle: {share}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ring did not settle: {sa} {sb}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    let ring = get_json(&hb, "/ring").await;
    let mut ids: Vec<&str> = ring
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![ida.as_str(), idb.as_str()];
    want.sort();
    assert_eq!(ids, want, "{ring}");

    let client = Client::connect(ClientConfig::new(a.node.me().addr.clone()))
        .await
        .unwrap();
    let data = vec![7u8; 3 * 1024 * 1024 + 5];
    client
        .put_file("/big", &mut &data[..], 0o644, &|_| {})
        .await
        .unwrap();
    let keys: Vec<String> = client
        .resolve("/big")
        .await
        .unwrap()
        .inode
        .chunks
        .iter()
        .map(|k| k.to_hex())
        .collect();

    // Both nodes hold every chunk (R = 3 > 2 nodes): one as primary, the other as replica.
    let (ca, cb) = (
        get_json(&ha, "/chunks").await,
        get_json(&hb, "/chunks").await,
    );
    let role = |c: &Value, k: &str| {
        c.as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .map(|e| e["role"].as_str().unwrap().to_string())
    };
    for k in &keys {
        let mut roles = [role(&ca, k).expect("on a"), role(&cb, k).expect("on b")];
        roles.sort();
        assert_eq!(roles, ["primary", "replica"], "{k}");
    }
    // /files on either node lists the file with those chunks and the same roles.
    for (h, c) in [(&ha, &ca), (&hb, &cb)] {
        let files = get_json(h, "/files").await;
        let f = &files[0];
        assert_eq!(f["path"], "/big");
        for ch in f["chunks"].as_array().unwrap() {
            let k = ch["hash"].as_str().unwrap();
            assert_eq!(Some(ch["role"].as_str().unwrap().to_string()), role(c, k));
        }
    }

    let (code, _, body) = get(&ha, "/").await;
    assert_eq!(code, 200);
    assert!(body.contains("2 nodes"), "{body}");
    b.stop().await;
    a.stop().await;
}
