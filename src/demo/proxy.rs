//! A TCP relay that the demo puts between essops and one server so it can
//! cut the link for a stretch: the server itself stays real and untouched.
//! With a delay, every byte arrives that much later each way (a slow link
//! to a cloud server, reproducible on loopback); with a rate, each way
//! carries at most that many bytes a second (a cellular or satellite uplink).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

pub struct Relay {
    pub port: u16,
    up: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
}

impl Relay {
    /// Relays 127.0.0.1:<port> to `target` until dropped.
    pub async fn start(target: String) -> std::io::Result<Relay> {
        Relay::start_on(0, target, Duration::ZERO).await
    }

    /// Relays 127.0.0.1:`port` (0: any free port) to `target`, each way `delay` late.
    pub async fn start_on(port: u16, target: String, delay: Duration) -> std::io::Result<Relay> {
        Relay::start_shaped(port, target, Shape { delay, rate: None }).await
    }

    /// Relays 127.0.0.1:`port` (0: any free port) to `target`, shaped each way.
    pub async fn start_shaped(port: u16, target: String, shape: Shape) -> std::io::Result<Relay> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let port = listener.local_addr()?.port();
        let up = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (up2, links2) = (up.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        match shape.is_plain() {
                            true => {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                                    .await;
                            }
                            false => shaped_both_ways(inbound, outbound, shape).await,
                        }
                    }
                });
                links2
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(link.abort_handle());
            }
        })
        .abort_handle();
        Ok(Relay {
            port,
            up,
            links,
            accept,
        })
    }

    /// Breaks every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for l in self
            .links
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            l.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// How a relay shapes each direction.
#[derive(Debug, Clone, Copy, Default)]
pub struct Shape {
    /// Every byte arrives this much after it was read.
    pub delay: Duration,
    /// At most this many bytes a second (None: as fast as loopback).
    pub rate: Option<u64>,
}

impl Shape {
    fn is_plain(&self) -> bool {
        self.delay.is_zero() && self.rate.is_none()
    }
}

/// Relays both directions, each shaped.
async fn shaped_both_ways(inbound: TcpStream, outbound: TcpStream, shape: Shape) {
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    tokio::join!(
        shaped(in_read, out_write, shape),
        shaped(out_read, in_write, shape)
    );
}

async fn shaped(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    Shape { delay, rate }: Shape,
) {
    // Enough chunks in flight for a fast stream over the whole delay.
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(4096);
    // A slow link reads in small pieces, so the pacing below is smooth.
    let piece = match rate {
        Some(r) => (r as usize / 20).clamp(512, 64 * 1024),
        None => 64 * 1024,
    };
    let reader = async move {
        let mut buf = vec![0u8; piece];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .await
                    .is_err()
            {
                break;
            }
        }
    };
    let writer = async move {
        // When the link is free again, at `rate`.
        let mut free_at = Instant::now();
        while let Some((due, bytes)) = rx.recv().await {
            let at = match rate {
                Some(_) => due.max(free_at),
                None => due,
            };
            tokio::time::sleep_until(at).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
            if let Some(r) = rate {
                free_at = at.max(Instant::now())
                    + Duration::from_secs_f64(bytes.len() as f64 / r.max(1) as f64);
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
