//! A bare hyper HTTP server answering every request with the same small JSON body after
//! reading it: the baseline the decision endpoint's throughput is compared against in the
//! end-to-end benchmark (same load tool, same requests, same machine).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;

/// Serves until Ctrl-C; prints the bound address on the first line.
pub async fn run_standalone(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    let serve = crate::http::serve(
        listener,
        10_000,
        |req: hyper::Request<hyper::body::Incoming>, _| async move {
            let _ = req.into_body().collect().await;
            hyper::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(br#"{"outcome":"approved"}"#)))
                .unwrap_or_default()
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    );
    serve.await;
    Ok(())
}
