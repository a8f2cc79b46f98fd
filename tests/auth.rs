//! The cluster secret: nodes and clients that know it work together; a node without it
//! cannot join, and a client without it can neither read nor write.

use chordfs::chord::NodeConfig;
use chordfs::client::{Client, ClientConfig, ClientError};
use chordfs::daemon::{self, DaemonError, StartOptions};
use std::sync::Arc;
use std::time::Duration;

fn cfg(dir: &std::path::Path, secret: Option<&[u8]>) -> NodeConfig {
    let mut c = NodeConfig::new(String::new(), dir.to_path_buf());
    c.stabilize_every = Duration::from_millis(50);
    c.rpc_timeout = Duration::from_millis(1000);
    c.secret = secret.map(Arc::from);
    c
}

async fn node(
    dir: &std::path::Path,
    secret: Option<&[u8]>,
    join: Option<String>,
) -> Result<daemon::Running, DaemonError> {
    daemon::start(StartOptions {
        listen: "127.0.0.1:0".into(),
        join,
        http: None,
        cfg: cfg(dir, secret),
    })
    .await
}

fn client_cfg(ring: &str, secret: Option<&[u8]>) -> ClientConfig {
    let mut c = ClientConfig::new(ring);
    c.secret = secret.map(Arc::from);
    c.op_timeout = Duration::from_secs(2);
    c.rpc_timeout = Duration::from_secs(1);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_secret_get_in() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let secret: &[u8] = b"correct horse battery staple";
    let a = node(dirs[0].path(), Some(secret), None).await.unwrap();
    let ring = a.node.me().addr.clone();
    let b = node(dirs[1].path(), Some(secret), Some(ring.clone()))
        .await
        .unwrap();

    // A node with the wrong secret cannot join.
    let intruder = node(dirs[2].path(), Some(b"guess"), Some(ring.clone())).await;
    assert!(
        matches!(intruder, Err(DaemonError::Join { .. })),
        "a wrong secret must not join"
    );

    // With the secret: write and read back.
    let ok = Client::connect(client_cfg(&ring, Some(secret)))
        .await
        .unwrap();
    let data = b"only for the cluster".to_vec();
    ok.put_file("/secret.txt", &mut &data[..], 0o600, &|_| {})
        .await
        .unwrap();
    let mut back = Vec::new();
    ok.get_file("/secret.txt", &mut back, &|_| {})
        .await
        .unwrap();
    assert_eq!(back, data);

    // Without it, or with a wrong one: not even the ring view.
    for bad in [None, Some(&b"guess"[..])] {
        match Client::connect(client_cfg(&ring, bad)).await {
            Err(ClientError::NoRing { .. }) => {}
            Err(e) => panic!("expected the ring to refuse us, got {e}"),
            Ok(_) => panic!("a client without the secret got in"),
        }
    }
    // The nodes still serve the rightful client afterwards.
    let mut again = Vec::new();
    ok.get_file("/secret.txt", &mut again, &|_| {})
        .await
        .unwrap();
    assert_eq!(again, data);
    b.stop().await;
    a.stop().await;
}
