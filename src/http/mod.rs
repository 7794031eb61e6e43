//! The HTTP servers (hyper 1.x, HTTP/1.1 and h2c): the API of CONTRACT §5 on
//! `http.addr` and the Prometheus endpoint on `metrics.addr`. Both listeners are served by
//! [`serve_with`] and share its defences against slow and idle clients: connections are
//! capped; a connection that has not completed a request's headers within the header
//! timeout (counted from when it opened, or from when it started sending them) is closed;
//! a keep-alive connection with nothing in progress is closed after the idle timeout; a
//! request body that is not read in time is answered 408; HTTP/2 streams per connection
//! and requests in progress per listener are bounded (503 beyond); accepted sockets use
//! TCP keep-alive. Every error answers JSON.
//!
//! The header timeout is ours rather than hyper's: hyper's HTTP/1 timer starts only once
//! the protocol is known (a socket that sends nothing, or half an HTTP/2 preface, would
//! never be timed out) and it also runs while a keep-alive connection waits for its next
//! request, which would cut every idle connection at the header timeout instead of the
//! idle timeout. A small watchdog per connection applies both timeouts from what the
//! socket reads and what the service is handling.

pub mod api;
pub mod openapi;
pub mod routes;

use crate::config::HttpConfig;
use crate::telemetry as t;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body as _, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

pub type Body = Full<Bytes>;

/// A JSON response with the given status.
pub fn json_response(status: u16, body: &serde_json::Value) -> Response<Body> {
    json_bytes_response(
        status,
        Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    )
}

/// A JSON response of a body already serialized.
pub fn json_bytes_response(status: u16, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/json"),
        )
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// What one listener allows its clients.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The `listener` label of the HTTP metrics (`api`, `metrics`).
    pub name: &'static str,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub max_requests_in_flight: usize,
    /// `None`: no TCP keep-alive.
    pub tcp_keepalive: Option<Duration>,
}

impl Limits {
    /// The limits of `[http]`, for the listener called `name`.
    pub fn from_config(name: &'static str, c: &HttpConfig) -> Self {
        Self {
            name,
            max_connections: c.max_connections,
            header_read_timeout: Duration::from_millis(c.header_read_timeout_ms),
            idle_timeout: Duration::from_secs(c.idle_timeout_seconds),
            body_timeout: Duration::from_millis(c.body_timeout_ms),
            max_streams_per_connection: c.max_streams_per_connection,
            max_requests_in_flight: c.max_requests_in_flight,
            tcp_keepalive: (c.tcp_keepalive_seconds > 0)
                .then(|| Duration::from_secs(c.tcp_keepalive_seconds)),
        }
    }

    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }
}

/// Serves `handler` on `listener` until `stop` resolves, at most `max_connections` at once,
/// with the default timeouts of `[http]`.
pub async fn serve<H, F>(
    listener: TcpListener,
    max_connections: usize,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let limits =
        Limits::from_config("http", &HttpConfig::default()).with_max_connections(max_connections);
    serve_with(listener, limits, handler, stop).await
}

/// Serves `handler` on `listener` until `stop` resolves, within `limits`.
pub async fn serve_with<H, F>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    stop: impl Future<Output = ()>,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(stop);
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let requests = Arc::new(Semaphore::new(limits.max_requests_in_flight));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = &mut stop => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => return,
        };
        let _ = stream.set_nodelay(true);
        if let Some(idle) = limits.tcp_keepalive {
            let ka = socket2::TcpKeepalive::new()
                .with_time(idle)
                .with_interval((idle / 4).max(Duration::from_secs(1)));
            if let Err(e) = socket2::SockRef::from(&stream).set_tcp_keepalive(&ka) {
                tracing::debug!("TCP keep-alive not set: {e}");
            }
        }
        let handler = handler.clone();
        let limits = limits.clone();
        let requests = requests.clone();
        tokio::spawn(async move {
            connection(stream, peer, &limits, requests, handler).await;
            drop(permit);
        });
    }
}

/// One connection's life: hyper serves it while the watchdog applies the timeouts.
async fn connection<H, F>(
    stream: TcpStream,
    peer: SocketAddr,
    limits: &Limits,
    requests: Arc<Semaphore>,
    handler: H,
) where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let watch = Arc::new(Watch::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        watch: watch.clone(),
    });
    let body_timeout = limits.body_timeout;
    let name = limits.name;
    let svc_watch = watch.clone();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let h = handler.clone();
        let guard = svc_watch.begin();
        let requests = requests.clone();
        async move {
            let _guard = guard;
            let Ok(_permit) = requests.try_acquire_owned() else {
                metrics::counter!(t::HTTP_REFUSED, "listener" => name, "reason" => "overloaded")
                    .increment(1);
                return Ok::<_, std::convert::Infallible>(json_response(
                    503,
                    &serde_json::json!({"error": "overloaded", "message": "too many requests in progress"}),
                ));
            };
            if req.body().is_end_stream() {
                return Ok(h(req, peer).await);
            }
            // A body may trickle in: the whole request gets the body timeout.
            match tokio::time::timeout(body_timeout, h(req, peer)).await {
                Ok(r) => Ok(r),
                Err(_) => {
                    metrics::counter!(t::HTTP_REFUSED, "listener" => name, "reason" => "body_timeout")
                        .increment(1);
                    let mut r = json_response(
                        408,
                        &serde_json::json!({"error": "request_timeout", "message": "the request body was not received in time"}),
                    );
                    r.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("close"),
                    );
                    Ok(r)
                }
            }
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Ours applies (see the module doc); hyper's would also cut idle keep-alives.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(16 * 1024);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    let header_ms = limits.header_read_timeout.as_millis() as u64;
    let idle_ms = limits.idle_timeout.as_millis() as u64;
    let mut closing: Option<Instant> = None;
    loop {
        let now = watch.now_ms();
        let mut wake_at = match watch.verdict(now, header_ms, idle_ms) {
            Verdict::Wait(at) => at.map(|ms| watch.epoch + Duration::from_millis(ms)),
            Verdict::HeaderTimeout => {
                metrics::counter!(t::HTTP_CLOSED, "listener" => name, "reason" => "header_timeout")
                    .increment(1);
                tracing::debug!(%peer, "request headers incomplete in time; connection closed");
                return;
            }
            Verdict::Idle => {
                if closing.is_none() {
                    metrics::counter!(t::HTTP_CLOSED, "listener" => name, "reason" => "idle")
                        .increment(1);
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now() + Duration::from_secs(1));
                }
                None
            }
        };
        if let Some(c) = closing {
            wake_at = Some(wake_at.map_or(c, |w| w.min(c)));
        }
        let sleep = async {
            match wake_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = watch.wake.notified() => {}
            _ = sleep => {
                if closing.is_some_and(|c| Instant::now() >= c) {
                    return;
                }
            }
        }
    }
}

/// What the watchdog decides at a given moment.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing to do; look again at this time (ms since the connection opened), or when
    /// woken.
    Wait(Option<u64>),
    /// A request's headers were started (or the connection opened) too long ago.
    HeaderTimeout,
    /// Nothing in progress for the idle timeout.
    Idle,
}

/// A connection's activity as the watchdog sees it.
struct Watch {
    epoch: Instant,
    /// Requests handed to the service and not yet answered.
    in_flight: AtomicUsize,
    /// When the last request was answered (ms since `epoch`).
    idle_since: AtomicU64,
    /// 1 + when bytes arrived with no request in progress (a request's headers are on
    /// their way); 0 = none. A new connection starts with a request expected.
    head_since: AtomicU64,
    wake: Notify,
}

impl Watch {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(1),
            wake: Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::SeqCst) == 0 && self.head_since.load(Ordering::SeqCst) == 0
        {
            self.head_since.store(self.now_ms() + 1, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since.store(0, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn verdict(&self, now: u64, header_ms: u64, idle_ms: u64) -> Verdict {
        verdict(
            self.in_flight.load(Ordering::SeqCst),
            self.head_since.load(Ordering::SeqCst),
            self.idle_since.load(Ordering::SeqCst),
            now,
            header_ms,
            idle_ms,
        )
    }
}

/// The pure rule: with a request in progress nothing times out here (the handler bounds
/// itself: body timeout, long-poll maximum); otherwise headers started must complete
/// within `header_ms` and an idle connection lives `idle_ms`.
fn verdict(
    in_flight: usize,
    head_since: u64,
    idle_since: u64,
    now: u64,
    header_ms: u64,
    idle_ms: u64,
) -> Verdict {
    if in_flight > 0 {
        return Verdict::Wait(None);
    }
    let idle_at = idle_since + idle_ms;
    if head_since > 0 {
        let head_at = head_since - 1 + header_ms;
        if now >= head_at {
            return Verdict::HeaderTimeout;
        }
        if now >= idle_at {
            return Verdict::Idle;
        }
        return Verdict::Wait(Some(head_at.min(idle_at)));
    }
    if now >= idle_at {
        return Verdict::Idle;
    }
    Verdict::Wait(Some(idle_at))
}

/// Marks a request in progress until dropped (answered or cancelled).
struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let w = &self.0;
        w.idle_since.store(w.now_ms(), Ordering::SeqCst);
        if w.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            w.wake.notify_one();
        }
    }
}

/// The socket, telling the watchdog when bytes arrive.
struct Watched {
    inner: TcpStream,
    watch: Arc<Watch>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.on_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_connection_must_complete_its_headers_in_time() {
        // Opened at 0 (head_since = 1 + 0), nothing answered yet.
        assert_eq!(verdict(0, 1, 0, 0, 100, 1000), Verdict::Wait(Some(100)));
        assert_eq!(verdict(0, 1, 0, 99, 100, 1000), Verdict::Wait(Some(100)));
        assert_eq!(verdict(0, 1, 0, 100, 100, 1000), Verdict::HeaderTimeout);
    }

    #[test]
    fn a_request_in_progress_is_never_timed_out_here() {
        assert_eq!(verdict(1, 0, 0, 1_000_000, 100, 1000), Verdict::Wait(None));
    }

    #[test]
    fn an_idle_keep_alive_connection_lives_the_idle_timeout() {
        // Answered at 500, nothing since.
        assert_eq!(
            verdict(0, 0, 500, 600, 100, 1000),
            Verdict::Wait(Some(1500))
        );
        assert_eq!(verdict(0, 0, 500, 1500, 100, 1000), Verdict::Idle);
    }

    #[test]
    fn headers_started_on_a_kept_alive_connection_must_complete() {
        // Answered at 500; the next request's first bytes came at 700.
        assert_eq!(
            verdict(0, 701, 500, 750, 100, 1000),
            Verdict::Wait(Some(800))
        );
        assert_eq!(verdict(0, 701, 500, 800, 100, 1000), Verdict::HeaderTimeout);
    }

    #[test]
    fn limits_come_from_the_config() {
        let l = Limits::from_config("api", &HttpConfig::default());
        assert_eq!(l.header_read_timeout, Duration::from_secs(10));
        assert_eq!(l.idle_timeout, Duration::from_secs(60));
        assert_eq!(l.tcp_keepalive, Some(Duration::from_secs(60)));
        assert_eq!(l.with_max_connections(64).max_connections, 64);
    }
}
