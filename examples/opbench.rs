//! Times the client operations a small-file create is made of, against a running ring.
//!
//! cargo run --release --example opbench -- HOST:PORT [N]

use chordfs::client::{Client, ClientConfig};
use chordfs::id::Id;
use chordfs::proto::{Inode, Kind, Record};
use std::time::Instant;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ring = args.next().expect("ring address");
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let client = Client::connect(ClientConfig::new(ring))
        .await
        .expect("connect");
    let root = client.root().await.expect("root");
    let time = |name: &str, t: Instant| {
        println!(
            "{name:<28} {:>8.3} ms/op",
            t.elapsed().as_secs_f64() * 1000.0 / n as f64
        )
    };
    let t = Instant::now();
    for i in 0..n {
        let data = bytes::Bytes::from(format!("chunk {i} {:?}", Instant::now()).repeat(200));
        client.put_chunk(data).await.unwrap();
    }
    time("put_chunk (4 KiB)", t);
    let t = Instant::now();
    for _ in 0..n {
        let ino = Inode::new(Kind::File, 0o644, 0, 0, root.id, 1 << 20);
        client
            .cas_record(&Id::random(), 0, Record::Inode(Box::new(ino)))
            .await
            .unwrap();
    }
    time("cas_record (new inode)", t);
    let t = Instant::now();
    for _ in 0..n {
        client.get_record(&root.id).await.unwrap();
    }
    time("get_record (root)", t);
    let t = Instant::now();
    for i in 0..n {
        let ino = Inode::new(Kind::File, 0o644, 0, 0, root.id, 1 << 20);
        client
            .create_child(
                &root.id,
                &format!("opbench-{i}-{}", Id::random().short()),
                ino,
                None,
            )
            .await
            .unwrap();
    }
    time("create_child", t);
}
