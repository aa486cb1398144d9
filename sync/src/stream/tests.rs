//! Real gRPC over loopback between a sender and receivers with their own tables.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shutdown::Shutdown;

use super::*;
use crate::conn::{
    CoarseClock, ConnEntry, ConnKey, ConnTable, FwdMethod, TableConfig, TcpState, proto,
};

/// Ends a served receiver when dropped.
mod shutdown {
    pub struct Shutdown(pub Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Shutdown {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }
}

fn table() -> Arc<ConnTable> {
    Arc::new(ConnTable::new(TableConfig::new(1 << 20)).unwrap())
}

fn entry(i: u32) -> ConnEntry {
    let v6 = i % 2 == 1;
    let (client, virt, dest): (SocketAddr, SocketAddr, SocketAddr) = if v6 {
        (
            format!("[2001:db8::{:x}]:{}", 0x1000 + i / 60000, 1024 + i % 60000)
                .parse()
                .unwrap(),
            "[2001:db8::100]:80".parse().unwrap(),
            "[2001:db8::33]:80".parse().unwrap(),
        )
    } else {
        (
            format!("198.51.100.{}:{}", 1 + i / 60000, 1024 + i % 60000)
                .parse()
                .unwrap(),
            "192.0.2.100:80".parse().unwrap(),
            "192.0.2.33:80".parse().unwrap(),
        )
    };
    let key = ConnKey::new(proto::TCP, client, virt).unwrap();
    let mut e = ConnEntry::new(key, dest, FwdMethod::DirectRoute, 1);
    e.set_state(TcpState::Established as u8);
    e.set_expiry(0, 900);
    e
}

/// Serves a receiver on its own runtime in its own thread; dropping the guard drops the
/// runtime, which ends every connection at once, as a killed process would.
async fn serve(replica: Arc<TableReplica>, addr: SocketAddr, me: u64) -> (Receiver, Shutdown) {
    let rx = Receiver::new(me, "test".into(), replica);
    let (tx, stop) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready) = tokio::sync::oneshot::channel::<()>();
    let svc = rx.clone().into_service();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let _ = ready_tx.send(());
            tokio::select! {
                _ = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming) => {}
                _ = stop => {}
            }
        });
        rt.shutdown_background();
    });
    ready.await.unwrap();
    (rx, Shutdown(Some(tx)))
}

fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn sender_over(src: &Arc<TableSource>, timers: SyncTimers) -> Sender {
    src.queue.set_enabled(true);
    Sender::start(1, "test".into(), timers, src.clone())
}

fn source() -> Arc<TableSource> {
    Arc::new(TableSource {
        table: table(),
        clock: CoarseClock::new(),
        queue: ChangeQueue::new(1 << 20),
    })
}

fn replica() -> Arc<TableReplica> {
    Arc::new(TableReplica {
        table: table(),
        clock: CoarseClock::new(),
    })
}

/// Records a change the way the engine does: into the table, then into the queue.
fn change(src: &TableSource, e: ConnEntry) {
    src.table.upsert(e).unwrap();
    let mut v = vec![e];
    src.queue.push_from(&mut v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_first_then_live_changes_ipv4_and_ipv6() {
    let src = source();
    // Already in the table before the peer appears: must arrive through the snapshot.
    for i in 0..5000 {
        src.table.upsert(entry(i)).unwrap();
    }
    let addr = free_addr();
    let rep = replica();
    let (rx, _srv) = serve(rep.clone(), addr, 2).await;
    let tx = sender_over(&src, SyncTimers::default());
    tx.set_peers(&[(2, addr.to_string())]);
    wait_for("snapshot", || rep.table.len() == 5000).await;
    wait_for("current", || tx.current_peers() == vec![2]).await;
    for i in 5000..8000 {
        change(&src, entry(i));
    }
    wait_for("live changes", || rep.table.len() == 8000).await;
    let got = rep.table.lookup(entry(7001).key()).unwrap();
    assert_eq!(got.origin(), 1, "synced from node 1");
    assert_eq!(got.dest(), entry(7001).dest());
    assert!(got.remaining(rep.clock.now()) > 890);
    // The receiver installs a batch before its acknowledgement reaches the sender.
    wait_for("acknowledgements", || tx.status()[0].acked >= 8000).await;
    let st = &tx.status()[0];
    assert_eq!(st.resyncs, 1);
    assert_eq!(st.snapshot_entries, 5000);
    assert!(st.sent >= 8000 && st.acked >= 8000, "{st:?}");
    assert_eq!(st.dropped, 0);
    let r = &rx.status()[0];
    assert!(r.complete && r.connected);
    tx.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_gets_a_full_resync() {
    let src = source();
    let addr = free_addr();
    let rep = replica();
    let srv = serve(rep.clone(), addr, 2).await;
    let tx = sender_over(&src, SyncTimers::default());
    tx.set_peers(&[(2, addr.to_string())]);
    for i in 0..3000 {
        change(&src, entry(i));
    }
    wait_for("first copy", || rep.table.len() == 3000).await;
    drop(srv);
    // The receiver comes back empty (a restarted director).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let rep2 = replica();
    let _srv2 = serve(rep2.clone(), addr, 2).await;
    wait_for("resync", || rep2.table.len() == 3000).await;
    wait_for("current again", || tx.current_peers() == vec![2]).await;
    assert!(tx.status()[0].resyncs >= 2);
    tx.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_falls_behind_is_marked_and_recovers_by_snapshot() {
    let src = source();
    let addr = free_addr();
    let timers = SyncTimers {
        batch_entries: 64,
        window: 2,
        max_lag_entries: 256,
        ..SyncTimers::default()
    };
    let tx = sender_over(&src, timers);
    // Nobody listens yet: changes pile up for the peer beyond its bound.
    tx.set_peers(&[(2, addr.to_string())]);
    for i in 0..2000 {
        change(&src, entry(i));
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
    wait_for("marked behind", || {
        let s = &tx.status()[0];
        s.behind && s.dropped > 0 && !s.current
    })
    .await;
    let rep = replica();
    let _srv = serve(rep.clone(), addr, 2).await;
    wait_for("recovered by snapshot", || rep.table.len() == 2000).await;
    wait_for("current", || tx.current_peers() == vec![2]).await;
    assert!(!tx.status()[0].behind);
    tx.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_another_cluster_or_record_version_is_refused() {
    let src = source();
    let addr = free_addr();
    let rep = replica();
    let rx = Receiver::new(2, "other-cluster".into(), rep.clone());
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let svc = rx.clone().into_service();
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    let tx = sender_over(&src, SyncTimers::default());
    tx.set_peers(&[(2, addr.to_string())]);
    change(&src, entry(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rep.table.len(), 0);
    let st = &tx.status()[0];
    assert_eq!(st.state, LinkState::Connecting);
    assert!(!st.current);
    tx.stop();
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_sweeps_the_copies_of_flows_that_ended_meanwhile() {
    let addr = free_addr();
    let rep = replica();
    let (rx, _srv) = serve(rep.clone(), addr, 2).await;
    let first = source();
    let tx = sender_over(&first, SyncTimers::default());
    tx.set_peers(&[(2, addr.to_string())]);
    for i in 0..3000 {
        change(&first, entry(i));
    }
    wait_for("first copy", || rep.table.len() == 3000).await;
    tx.stop();
    // Node 1 restarts; meanwhile 2000 of its flows ended. The copies are stamped in whole
    // seconds: let the snapshot start in a later second than they were received.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let second = source();
    for i in 0..1000 {
        second.table.upsert(entry(i)).unwrap();
    }
    let tx2 = sender_over(&second, SyncTimers::default());
    tx2.set_peers(&[(2, addr.to_string())]);
    wait_for("snapshot and sweep", || {
        rx.status()
            .first()
            .is_some_and(|s| s.complete && s.swept == 2000)
    })
    .await;
    assert_eq!(rep.table.len(), 1000);
    assert!(rep.table.lookup(entry(999).key()).is_some());
    assert!(rep.table.lookup(entry(1000).key()).is_none());
    tx2.stop();
}
