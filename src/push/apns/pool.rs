//! The APNs connection pool: N long-lived HTTP/2 connections over TLS (ALPN `h2`,
//! TCP_NODELAY, keep-alive PINGs), each kept alive by a supervisor task that replaces it
//! with backoff when it fails or receives GOAWAY — never in a tight loop.
//!
//! Streams are bounded per connection by a semaphore that follows the server's
//! SETTINGS_MAX_CONCURRENT_STREAMS (read once the server's SETTINGS arrived, then again
//! each time the connection dispatches a request, so a server that raises or lowers the
//! limit later is followed), capped at
//! [`MAX_STREAMS_PER_CONN`]. Requests take a permit before opening a stream, so hyper's
//! internal queue of pending streams never grows.

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::{Connection, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Apple advertises up to 1000 concurrent streams; never open more per connection.
pub const MAX_STREAMS_PER_CONN: usize = 1000;
/// A connection that lived at least this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const RECONNECT_BASE: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// How long a new connection waits for the server's SETTINGS before it is used anyway.
const SETTINGS_WAIT: Duration = Duration::from_millis(250);
const SETTINGS_POLL: Duration = Duration::from_millis(2);

type Io = TokioIo<TlsStream<TcpStream>>;
type Body = Full<Bytes>;

/// Where to connect: parsed from `apns.endpoint`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: Host,
    port: u16,
    server_name: ServerName<'static>,
    /// `https://host[:port]`, the prefix of every request URI.
    pub base: String,
}

#[derive(Debug, Clone)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Endpoint {
    /// Parses an `https://` URL; the path, if any, is ignored (APNs paths are fixed).
    pub fn parse(endpoint: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(endpoint).map_err(|e| format!("{endpoint:?}: {e}"))?;
        if url.scheme() != "https" {
            return Err(format!("{endpoint:?}: APNs needs https"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let (host, server_name) = match url.host() {
            Some(url::Host::Domain(d)) => (
                Host::Name(d.to_string()),
                ServerName::try_from(d.to_string()).map_err(|e| format!("{d:?}: {e}"))?,
            ),
            Some(url::Host::Ipv4(ip)) => (Host::Ip(ip.into()), ServerName::from(IpAddr::from(ip))),
            Some(url::Host::Ipv6(ip)) => (Host::Ip(ip.into()), ServerName::from(IpAddr::from(ip))),
            None => return Err(format!("{endpoint:?}: no host")),
        };
        let host_str = url.host_str().unwrap_or_default();
        let base = match url.port() {
            Some(p) => format!("https://{host_str}:{p}"),
            None => format!("https://{host_str}"),
        };
        Ok(Endpoint {
            host,
            port,
            server_name,
            base,
        })
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub connections: usize,
    /// Keep-alive PING interval; `None`: no PINGs.
    pub ping_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection counts as dead.
    pub ping_timeout: Duration,
    pub connect_timeout: Duration,
}

struct Conn {
    id: u64,
    sender: SendRequest<Body>,
    streams: Arc<Semaphore>,
}

struct Shared {
    slots: Vec<Mutex<Option<Arc<Conn>>>>,
    /// Woken whenever a connection becomes usable.
    ready: Notify,
    rr: AtomicUsize,
    next_id: AtomicU64,
    connects: AtomicU64,
}

/// The pool; dropping it stops the supervisors and closes the connections.
pub struct Pool {
    shared: Arc<Shared>,
    _shutdown: watch::Sender<()>,
}

/// A stream slot on a live connection; the permit is released when dropped.
pub struct Lease {
    pub sender: SendRequest<Body>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// Starts one supervisor task per connection; must run inside a tokio runtime.
    pub fn start(endpoint: Endpoint, tls: Arc<rustls::ClientConfig>, cfg: PoolConfig) -> Pool {
        let n = cfg.connections.max(1);
        let shared = Arc::new(Shared {
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            ready: Notify::new(),
            rr: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            connects: AtomicU64::new(0),
        });
        let (tx, rx) = watch::channel(());
        let endpoint = Arc::new(endpoint);
        let connector = TlsConnector::from(tls);
        for slot in 0..n {
            tokio::spawn(supervise(
                slot,
                shared.clone(),
                endpoint.clone(),
                connector.clone(),
                cfg.clone(),
                rx.clone(),
            ));
        }
        Pool {
            shared,
            _shutdown: tx,
        }
    }

    /// Connections opened so far (including replacements).
    pub fn connects(&self) -> u64 {
        self.shared.connects.load(Ordering::Relaxed)
    }

    /// Live connections right now.
    pub fn live(&self) -> usize {
        self.shared
            .slots
            .iter()
            .filter(|s| lock(s).as_ref().is_some_and(|c| !c.sender.is_closed()))
            .count()
    }

    /// Waits for a stream on a live connection: prefers any connection with a free
    /// stream (round robin), else waits on one. The caller bounds the wait with its
    /// request timeout.
    pub async fn checkout(&self) -> Lease {
        loop {
            // The usual case first, without registering for `ready`: a free stream now.
            if let Ok(lease) = self.scan() {
                return lease;
            }
            // Registered before looking again, so that a connection coming up in between
            // is not missed.
            let notified = self.shared.ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let fallback = match self.scan() {
                Ok(lease) => return lease,
                Err(fallback) => fallback,
            };
            match fallback {
                // Every live connection is at its stream limit: queue on one, unless
                // another connection comes up meanwhile.
                Some(conn) => {
                    tokio::select! {
                        biased;
                        permit = conn.streams.clone().acquire_owned() => {
                            if let Ok(permit) = permit {
                                return Lease {
                                    sender: conn.sender.clone(),
                                    _permit: permit,
                                };
                            }
                            // Closed while waiting: the connection died; look again.
                        }
                        _ = notified.as_mut() => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// One round-robin pass over the connections: a lease on the first live one with a
    /// free stream, else a live one to queue on (if any).
    fn scan(&self) -> Result<Lease, Option<Arc<Conn>>> {
        let shared = &self.shared;
        let n = shared.slots.len();
        let start = shared.rr.fetch_add(1, Ordering::Relaxed);
        let mut fallback: Option<Arc<Conn>> = None;
        for i in 0..n {
            let conn = match lock(&shared.slots[(start + i) % n]).as_ref() {
                Some(c) if !c.sender.is_closed() => c.clone(),
                _ => continue,
            };
            if let Ok(permit) = conn.streams.clone().try_acquire_owned() {
                return Ok(Lease {
                    sender: conn.sender.clone(),
                    _permit: permit,
                });
            }
            fallback.get_or_insert(conn);
        }
        Err(fallback)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connect(
    ep: &Endpoint,
    connector: &TlsConnector,
    cfg: &PoolConfig,
) -> Result<(SendRequest<Body>, Connection<Io, Body, TokioExecutor>), String> {
    let tcp = match &ep.host {
        Host::Ip(ip) => TcpStream::connect((*ip, ep.port)).await,
        Host::Name(name) => TcpStream::connect((name.as_str(), ep.port)).await,
    }
    .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let tls = connector
        .connect(ep.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
        return Err("the server did not negotiate HTTP/2 (ALPN h2)".into());
    }
    let mut b = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(cfg.ping_interval)
        .keep_alive_timeout(cfg.ping_timeout)
        .keep_alive_while_idle(true);
    b.handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))
}

/// Keeps slot `slot` filled with a live connection until the pool is dropped.
async fn supervise(
    slot: usize,
    shared: Arc<Shared>,
    ep: Arc<Endpoint>,
    connector: TlsConnector,
    cfg: PoolConfig,
    mut shutdown: watch::Receiver<()>,
) {
    let mut failures: u32 = 0;
    loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(cfg.connect_timeout, connect(&ep, &connector, &cfg));
        let result = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err("connect timed out".into())),
            _ = shutdown.changed() => return,
        };
        match result {
            Ok((sender, conn)) => {
                let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
                shared.connects.fetch_add(1, Ordering::Relaxed);
                let mut conn = Box::pin(conn);
                // The handshake does not wait for the server's SETTINGS (hyper processes
                // frames in a task of its own): check until they have arrived (the stream
                // limit moves off hyper's initial guess) or briefly at most, so the first
                // requests already respect the server's SETTINGS_MAX_CONCURRENT_STREAMS.
                let initial = conn.as_ref().get_ref().current_max_send_streams();
                let settle = async {
                    let until = Instant::now() + SETTINGS_WAIT;
                    loop {
                        tokio::select! {
                            biased;
                            r = conn.as_mut() => return Some(r),
                            _ = tokio::time::sleep(SETTINGS_POLL) => {}
                        }
                        if conn.as_ref().get_ref().current_max_send_streams() != initial
                            || Instant::now() >= until
                        {
                            return None;
                        }
                    }
                };
                let settled = tokio::select! {
                    r = settle => r,
                    _ = shutdown.changed() => return,
                };
                let streams = Arc::new(Semaphore::new(0));
                let mut limit = StreamLimit {
                    sem: streams.clone(),
                    granted: 0,
                };
                let outcome = match settled {
                    // The connection ended before it could be used.
                    Some(r) => Some(r),
                    None => {
                        limit.set(conn.as_ref().get_ref().current_max_send_streams());
                        *lock(&shared.slots[slot]) = Some(Arc::new(Conn {
                            id,
                            sender,
                            streams: streams.clone(),
                        }));
                        shared.ready.notify_waiters();
                        tracing::debug!(
                            slot,
                            conn = id,
                            streams = limit.granted,
                            "apns connection up"
                        );
                        let driven = std::future::poll_fn(|cx| {
                            let r = conn.as_mut().poll(cx);
                            limit.set(conn.as_ref().get_ref().current_max_send_streams());
                            r
                        });
                        tokio::select! {
                            r = driven => Some(r),
                            _ = shutdown.changed() => None,
                        }
                    }
                };
                {
                    let mut s = lock(&shared.slots[slot]);
                    if s.as_ref().is_some_and(|c| c.id == id) {
                        *s = None;
                    }
                }
                streams.close();
                match outcome {
                    None => return,
                    Some(Ok(())) => tracing::info!(
                        slot,
                        conn = id,
                        "apns connection closed (GOAWAY or end of stream); replacing it"
                    ),
                    Some(Err(e)) => {
                        tracing::warn!(slot, conn = id, error = %e, "apns connection failed; replacing it")
                    }
                }
                if started.elapsed() >= STABLE_AFTER {
                    failures = 0;
                } else {
                    failures = failures.saturating_add(1);
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(slot, failures, error = %e, "apns connect failed");
            }
        }
        let delay = crate::retry::backoff(failures, RECONNECT_BASE, RECONNECT_MAX);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Keeps a connection's stream semaphore at the server's current limit.
struct StreamLimit {
    sem: Arc<Semaphore>,
    granted: usize,
}

impl StreamLimit {
    fn set(&mut self, server_max: usize) {
        let max = server_max.clamp(1, MAX_STREAMS_PER_CONN);
        if max > self.granted {
            self.sem.add_permits(max - self.granted);
        } else if max < self.granted {
            let excess = self.granted - max;
            let left = excess - self.sem.forget_permits(excess);
            if left > 0 {
                // Streams in flight hold the rest: retire those permits as they return.
                let sem = self.sem.clone();
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(left as u32).await {
                        p.forget();
                    }
                });
            }
        }
        self.granted = max;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("https://api.push.apple.com").unwrap();
        assert_eq!(e.base, "https://api.push.apple.com");
        assert_eq!(e.port, 443);
        let e = Endpoint::parse("https://127.0.0.1:8443/").unwrap();
        assert_eq!(e.base, "https://127.0.0.1:8443");
        assert_eq!(e.port, 8443);
        assert!(matches!(e.host, Host::Ip(_)));
        let e = Endpoint::parse("https://[::1]:9000").unwrap();
        assert_eq!(e.base, "https://[::1]:9000");
        assert!(Endpoint::parse("http://api.push.apple.com").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[tokio::test]
    async fn stream_limit_follows_the_server() {
        let sem = Arc::new(Semaphore::new(0));
        let mut l = StreamLimit {
            sem: sem.clone(),
            granted: 0,
        };
        l.set(100);
        assert_eq!(sem.available_permits(), 100);
        l.set(usize::MAX);
        assert_eq!(sem.available_permits(), MAX_STREAMS_PER_CONN);
        l.set(0);
        assert_eq!(sem.available_permits(), 1);
        // Lowering while streams are in flight retires permits as they come back.
        l.set(10);
        let held = sem.clone().acquire_many_owned(10).await.unwrap();
        l.set(4);
        assert_eq!(sem.available_permits(), 0);
        drop(held);
        tokio::task::yield_now().await;
        tokio::task::yield_now().await;
        assert_eq!(sem.available_permits(), 4);
    }
}
