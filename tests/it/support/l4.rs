//! An L4 round-robin forwarder, as a TCP balancer (HAProxy in `mode tcp`, an NLB) stands in
//! front of a site: each accepted connection goes whole to the next address in turn. It
//! counts the connections each address received.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

pub struct L4 {
    pub addr: SocketAddr,
    counts: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl L4 {
    /// Listens on `listen` (already known to be free) and forwards to `targets` in turn.
    pub async fn start(listen: SocketAddr, targets: Vec<SocketAddr>) -> L4 {
        let listener = TcpListener::bind(listen)
            .await
            .expect("bind the L4 forwarder");
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(targets.iter().map(|_| AtomicUsize::new(0)).collect());
        let c = counts.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let i = next % targets.len();
                next += 1;
                c[i].fetch_add(1, Ordering::SeqCst);
                let target = targets[i];
                tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
            }
        });
        L4 { addr, counts, task }
    }

    /// Connections forwarded to each target so far, in the order of the targets.
    pub fn connections(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for L4 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
