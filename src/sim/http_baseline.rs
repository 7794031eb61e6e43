//! A bare hyper HTTP server, the baseline the decision endpoint's throughput is compared
//! against in the end-to-end benchmark (same HTTP server layer, same load tool, same
//! requests, same machine). It reads each request's body and answers the same small
//! JSON. With a broker ([`Publish`]) it also does the broker work a decision does: one
//! persistent, mandatory message published on a confirm-mode channel it holds, the
//! confirm awaited in a task of its own as the daemon's publisher does, at most
//! [`WINDOW`] awaiting their confirm (the daemon's default `amqp.publish_window`).
//! Without one it is the empty handler.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Publishes awaiting their confirm at once.
pub const WINDOW: usize = 2000;

/// What each request publishes, and where.
#[derive(Debug, Clone)]
pub struct Publish {
    pub amqp_url: String,
    /// An existing exchange (the daemon's outcomes exchange, in the benchmark).
    pub exchange: String,
    pub routing_key: String,
}

/// An outcome's size and shape (CONTRACT §4), published by every request.
const BODY: &[u8] = br#"{"v":1,"challenge_id":"http-baseline-0000000","user_id":"http-baseline-user","kind":"login","outcome":"approved","channel":"push","device_id":"d0","reason":null,"decided_at":"2026-01-01T00:00:00.000Z","elapsed_ms":20}"#;

struct Publisher {
    /// Held for as long as the channel is used.
    _conn: Connection,
    channel: Channel,
    exchange: String,
    routing_key: String,
    window: Arc<Semaphore>,
}

impl Publisher {
    /// Takes a window slot (waiting when full), then publishes and awaits the confirm in
    /// a task holding it.
    async fn publish(self: &Arc<Self>) {
        let Ok(slot) = self.window.clone().acquire_owned().await else {
            return;
        };
        let me = self.clone();
        tokio::spawn(async move {
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2);
            let opts = BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            };
            if let Ok(confirm) = me
                .channel
                .basic_publish(
                    me.exchange.as_str().into(),
                    me.routing_key.as_str().into(),
                    opts,
                    BODY,
                    props,
                )
                .await
            {
                let _ = confirm.await;
            }
            drop(slot);
        });
    }
}

/// Serves until Ctrl-C; prints the bound address on the first line.
pub async fn run_standalone(addr: SocketAddr, publish: Option<Publish>) -> anyhow::Result<()> {
    let publisher = match publish {
        Some(p) => {
            let conn =
                crate::amqp::client::connect(&p.amqp_url, "sca-dispatch http-baseline").await?;
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Some(Arc::new(Publisher {
                _conn: conn,
                channel,
                exchange: p.exchange,
                routing_key: p.routing_key,
                window: Arc::new(Semaphore::new(WINDOW)),
            }))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("{}", listener.local_addr()?);
    let serve = crate::http::serve(
        listener,
        10_000,
        move |req: hyper::Request<hyper::body::Incoming>, _| {
            let publisher = publisher.clone();
            async move {
                let _ = req.into_body().collect().await;
                if let Some(p) = &publisher {
                    p.publish().await;
                }
                hyper::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(br#"{"outcome":"approved"}"#)))
                    .unwrap_or_default()
            }
        },
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    );
    serve.await;
    Ok(())
}
