//! Times the client operations a small-file create is made of, against a running ring.
//!
//! cargo run --release --example opbench -- HOST:PORT [N]
//!
//! Each line is the mean over N operations done one after another. The creates go into
//! a fresh directory, so runs do not grow the root.

use chordfs::client::tree::InodeRef;
use chordfs::client::{Client, ClientConfig};
use chordfs::id::Id;
use chordfs::proto::{Inode, Kind, Record};
use std::time::Instant;

fn file(parent: Id) -> Inode {
    Inode::new(Kind::File, 0o644, 0, 0, parent, 1 << 20)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let ring = args.next().expect("ring address");
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let client = Client::connect(ClientConfig::new(ring))
        .await
        .expect("connect");
    let root = client.root().await.expect("root");
    let dir_inode = Inode::new(Kind::Dir, 0o755, 0, 0, root.id, 0);
    let name = format!("opbench-{}", Id::random().short());
    let dir = client
        .create_child(&root.id, &name, dir_inode, None)
        .await
        .expect("bench directory");
    let time = |name: &str, t: Instant| {
        println!(
            "{name:<40} {:>8.3} ms/op",
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
        let ino = Record::Inode(Box::new(file(dir.id)));
        client.cas_record(&Id::random(), 0, ino).await.unwrap();
    }
    time("cas_record (new inode)", t);
    let key = Id::random();
    let t = Instant::now();
    for v in 0..n as u64 {
        let ino = Record::Inode(Box::new(file(dir.id)));
        client.cas_record(&key, v, ino).await.unwrap();
    }
    time("cas_record (next version of one inode)", t);
    let t = Instant::now();
    for _ in 0..n {
        let (a, b) = (
            Record::Inode(Box::new(file(dir.id))),
            Record::Inode(Box::new(file(dir.id))),
        );
        let (ka, kb) = (Id::random(), Id::random());
        let (x, y) = tokio::join!(client.cas_record(&ka, 0, a), client.cas_record(&kb, 0, b));
        x.unwrap();
        y.unwrap();
    }
    time("2 x cas_record in parallel", t);
    let t = Instant::now();
    for _ in 0..n {
        client.get_record(&root.id).await.unwrap();
    }
    time("get_record (root)", t);
    let t = Instant::now();
    for i in 0..n {
        client
            .create_child(&dir.id, &format!("a{i}"), file(dir.id), None)
            .await
            .unwrap();
    }
    time("create_child (an edit of the parent)", t);
    let mut known: Option<InodeRef> = Some(client.get_inode(&dir.id).await.unwrap());
    let t = Instant::now();
    for i in 0..n {
        let (_, d) = client
            .create_child_in(&dir.id, &format!("b{i}"), file(dir.id), known.take())
            .await
            .unwrap();
        known = d;
    }
    time("create_child (parent known, kept as written)", t);
    let t = Instant::now();
    for _ in 0..n {
        client.get_record(&dir.id).await.unwrap();
    }
    time(&format!("get_record (dir of {} names)", 2 * n), t);
}
