//! Slow and idle clients against both listeners: half-sent request lines, silent sockets,
//! idle keep-alive connections, trickling bodies, too many requests at once, and the
//! HTTP/2 stream bound. Each test sends the bad input over a real socket and checks the
//! clear answer (a closed connection, 408, 503) and that the daemon keeps serving.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TOKEN: &str = "edge-http-token";
/// How long the test waits for something that must happen (never a measured bound).
const PATIENCE: Duration = Duration::from_secs(15);

/// Reads until the peer closes the connection; what it sent before.
async fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let r = tokio::time::timeout(PATIENCE, s.read_to_end(&mut out)).await;
    assert!(r.is_ok(), "the server closed the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one HTTP/1.1 response head and its `content-length` body.
async fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(PATIENCE, s.read(&mut chunk))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
    }
}

async fn get_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    r[9..12].parse().unwrap()
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_request_lines_and_silent_sockets_do_not_lock_either_listener() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        c.http.max_connections = 16;
        c.http.header_read_timeout_ms = 500;
    })
    .await;
    let d = h.daemon.as_ref().unwrap();
    let (api, metrics) = (d.http_addr, d.metrics_addr);

    // Every API slot taken by a client that sends half a request line, then nothing.
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut s = TcpStream::connect(api).await.unwrap();
        s.write_all(b"GET /heal").await.unwrap();
        slow.push(s);
    }
    // Every metrics slot (64) taken by a socket that sends nothing at all: such a socket
    // never even shows which protocol it speaks.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(metrics).await.unwrap());
    }
    // The server closes each of them once the header timeout has passed...
    for s in slow.iter_mut().chain(silent.iter_mut()) {
        let got = read_to_close(s).await;
        assert!(got.is_empty(), "closed without an answer, got {got:?}");
    }
    // ...and both listeners answer again.
    assert_eq!(get_status(api, "/healthz").await, 200);
    let text = h.metrics().await;
    assert!(
        metric(
            &text,
            "sca_http_connections_closed_total",
            &[("listener", "api"), ("reason", "header_timeout")]
        ) >= 16.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "sca_http_connections_closed_total",
            &[("listener", "metrics"), ("reason", "header_timeout")]
        ) >= 64.0
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        c.http.idle_timeout_seconds = 1;
        // Long enough that only the idle timeout can be what closes the connection.
        c.http.header_read_timeout_ms = 120_000;
    })
    .await;
    let api = h.daemon.as_ref().unwrap().http_addr;
    let mut s = TcpStream::connect(api).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let r = read_response(&mut s).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
    // Kept alive between requests; closed once idle.
    assert_eq!(read_to_close(&mut s).await, "");
    let text = h.metrics().await;
    assert!(
        metric(
            &text,
            "sca_http_connections_closed_total",
            &[("listener", "api"), ("reason", "idle")]
        ) >= 1.0
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_body_is_answered_408_and_holds_no_request_slot_after() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        // Long enough that the probes below see the slot held even on a loaded machine.
        c.http.body_timeout_ms = 10_000;
        c.http.max_requests_in_flight = 1;
    })
    .await;
    let api = h.daemon.as_ref().unwrap().http_addr;
    // The slow request must take the only slot: if another request (the harness's own)
    // still held it, the slow one is refused 503 at once; open it again until it holds.
    let (mut slow, sent) = loop {
        let mut slow = TcpStream::connect(api).await.unwrap();
        let sent = std::time::Instant::now();
        slow.write_all(
            format!(
                "POST /v1/challenges/slow-body/otp HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"co"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut first = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(200), slow.read(&mut first)).await {
            Ok(Ok(n)) if n > 0 && first[..n].starts_with(b"HTTP/1.1 503") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ => break (slow, sent),
        }
    };
    // While that request is in progress it holds the only request slot: another request
    // is refused at once with 503 rather than queued behind it. Probed until well inside
    // the body timeout, however slowly the machine schedules the daemon's tasks.
    let mut refused = false;
    let mut probes = 0;
    while sent.elapsed() < Duration::from_secs(8) {
        probes += 1;
        match get_status(api, "/healthz").await {
            503 => {
                refused = true;
                break;
            }
            200 => tokio::time::sleep(Duration::from_millis(10)).await,
            s => panic!("unexpected status {s}"),
        }
    }
    if !refused {
        let mut seen = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut seen))
            .await
            .map_or(Ok(0), |r| r)
            .unwrap_or(0);
        panic!(
            "a request over max_requests_in_flight is answered 503: {probes} probes in {:?} \
             all answered 200; the slow request's socket had received {:?}",
            sent.elapsed(),
            String::from_utf8_lossy(&seen[..n])
        );
    }
    let r = read_response(&mut slow).await;
    assert!(r.starts_with("HTTP/1.1 408"), "{r}");
    assert!(r.contains("\"error\":\"request_timeout\""), "{r}");
    assert_eq!(
        read_to_close(&mut slow).await,
        "",
        "and the connection closed"
    );
    assert_eq!(get_status(api, "/healthz").await, 200);
    let text = h.metrics().await;
    for reason in ["overloaded", "body_timeout"] {
        assert!(
            metric(
                &text,
                "sca_http_requests_refused_total",
                &[("listener", "api"), ("reason", reason)]
            ) >= 1.0,
            "{reason}"
        );
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_per_connection_are_bounded() {
    let h = Harness::start_with(|c| {
        c.http.api_tokens = TOKEN.into();
        c.http.max_streams_per_connection = 7;
    })
    .await;
    let api = h.daemon.as_ref().unwrap().http_addr;
    let tcp = TcpStream::connect(api).await.unwrap();
    let (mut client, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let req = http::Request::get("http://t/healthz").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    tokio::pin!(resp);
    // Drive the connection by hand until the answer is in: the server's SETTINGS are
    // read by then, and the connection object tells what it allows.
    let status = tokio::time::timeout(
        PATIENCE,
        std::future::poll_fn(|cx| {
            use std::future::Future;
            let _ = std::pin::Pin::new(&mut conn).poll(cx);
            resp.as_mut().poll(cx)
        }),
    )
    .await
    .expect("an answer in time")
    .expect("an HTTP/2 answer")
    .status();
    assert_eq!(status, 200);
    assert_eq!(conn.max_concurrent_send_streams(), 7);
    h.cleanup().await;
}
