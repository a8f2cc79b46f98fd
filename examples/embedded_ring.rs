//! The smallest program that uses chordfs as a library: it starts a ring of three nodes
//! inside this process (on loopback ports the OS picks, data in temporary directories),
//! puts a file through the client library, gets it back, and checks the bytes.
//!
//! cargo run --example embedded_ring

use chordfs::chord::NodeConfig;
use chordfs::client::{Client, ClientConfig};
use chordfs::daemon::{start, Running, StartOptions};
use std::time::Duration;

async fn node(dir: &std::path::Path, join: Option<String>) -> Running {
    start(StartOptions {
        listen: "127.0.0.1:0".into(),
        join,
        http: None,
        cfg: NodeConfig::new(String::new(), dir.to_path_buf()),
    })
    .await
    .expect("a node starts")
}

#[tokio::main]
async fn main() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let first = node(dirs[0].path(), None).await;
    let seed = first.node.me().addr.clone();
    let mut nodes = vec![first];
    for d in &dirs[1..] {
        nodes.push(node(d.path(), Some(seed.clone())).await);
    }
    // Stabilize links the ring within a few rounds; a write needs min(R, live) copies.
    let ring_of_three = || {
        nodes
            .iter()
            .all(|n| n.node.snapshot().successors.len() >= 2)
    };
    for _ in 0..100 {
        if ring_of_three() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ring of {} nodes, seed {seed}", nodes.len());

    let client = Client::connect(ClientConfig::new(seed))
        .await
        .expect("connect");
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    client
        .put_file("/hello.bin", &mut &data[..], 0o644, &|_| {})
        .await
        .expect("put");
    let mut back = Vec::new();
    client
        .get_file("/hello.bin", &mut back, &|_| {})
        .await
        .expect("get");
    assert_eq!(back, data, "the bytes read back are the bytes written");
    println!("put and got {} bytes back intact", back.len());

    for n in nodes {
        n.leave().await;
    }
}
