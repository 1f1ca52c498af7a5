//! The test database (the cluster and its per-test databases are the testkit's),
//! where tests keep their files, and a proxy that can cut a server off from it.

use std::path::PathBuf;
use std::sync::Arc;

pub use devpocket_testkit::cluster::{Cluster, TestDatabase};

/// Where tests keep their embedded cluster and per-test data directories.
pub fn test_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("devpocket-test")
}

/// The cluster every test in this process uses.
pub fn cluster() -> &'static Cluster {
    Cluster::shared(&test_root())
}

/// A database of its own for one test, dropped with it.
pub async fn test_database() -> TestDatabase {
    cluster().database().await
}

/// A TCP front for the test database that can be cut and restored, to see how the
/// server behaves while PostgreSQL is unreachable.
pub struct DbProxy {
    pub url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl DbProxy {
    pub async fn start(db: &TestDatabase) -> Self {
        use std::sync::atomic::Ordering;
        let target = url::Url::parse(&db.url).expect("url");
        let query: std::collections::HashMap<_, _> = target.query_pairs().into_owned().collect();
        let socket = PathBuf::from(query.get("host").expect("socket dir")).join(format!(
            ".s.PGSQL.{}",
            query.get("port").map_or("5432", String::as_str)
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mut url = target.clone();
        url.set_query(None);
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(port)).expect("port");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        actix_web::rt::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !std::sync::atomic::AtomicBool::load(&up2, Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let socket = socket.clone();
                let mut cut_rx = cut2.subscribe();
                actix_web::rt::spawn(async move {
                    let Ok(mut server) = tokio::net::UnixStream::connect(&socket).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            url: url.to_string(),
            up,
            cut,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
