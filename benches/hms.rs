//! Huawei Push Kit throughput: messages/s from `HmsProvider` to the Push Kit simulator,
//! and in the same run a bare hyper client sending the same requests (same bodies, same
//! bearer token, same concurrency, the same pooled hyper-util/rustls client) as the
//! ceiling to compare against. The bare client does nothing but POST prebuilt bodies;
//! the provider also builds each body, goes through its token cache, concurrency limit,
//! timeout and classification. Two transports: plain HTTP/1.1 (a connection per
//! concurrent request) and HTTPS with HTTP/2 (requests multiplexed on one connection).
//!
//! Run: `cargo bench --bench hms`. Prints both rates and their ratio.

#[path = "bearer/mod.rs"]
mod bearer;

use bearer::{Bare, Device, CONCURRENCY, MESSAGES, ROUNDS};
use sca_dispatch::push::hms::message::build_body;
use sca_dispatch::push::hms::HmsProvider;
use sca_dispatch::sim::hms::{HmsSim, HmsSimOptions};
use sca_dispatch::tls::json_client;
use std::sync::Arc;

const DEVICE: Device = Device {
    id: "d-mate",
    token_prefix: "bench-token-",
};

async fn scenario(name: &str, tls: bool) {
    let sim = HmsSim::start(HmsSimOptions {
        max_recorded: 0,
        tls,
        ..HmsSimOptions::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = sim.write_config_files(dir.path()).expect("config files");
    cfg.max_concurrent = CONCURRENCY as u32;
    let provider = Arc::new(HmsProvider::new(&cfg).expect("provider"));
    let bare = Bare {
        client: json_client(&cfg.ca_file).expect("client"),
        uri: format!("{}/v1/{}/messages:send", sim.endpoint(), sim.app_id())
            .parse()
            .expect("uri"),
        bearer: http::HeaderValue::from_str(&format!("Bearer {}", sim.issue_access_token()))
            .expect("header"),
        content_type: "application/json;charset=UTF-8",
        accepted: |body| body.windows(8).any(|w| w == b"80000000"),
    };
    let (best_provider, best_bare) =
        bearer::compare(&format!("hms {name}"), &provider, DEVICE, bare, build_body).await;
    println!(
        "hms {name}: best HmsProvider {best_provider:.0} msg/s, best bare hyper client {best_bare:.0} msg/s, ratio {:.2} (target >= 0.80); tokens minted {}",
        best_provider / best_bare,
        sim.token_mints()
    );
    sim.shutdown().await;
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "hms: {MESSAGES} messages x {ROUNDS} rounds per transport, concurrency {CONCURRENCY}, simulator on loopback in the same process"
    );
    rt.block_on(scenario("http/1.1", false));
    rt.block_on(scenario("https h2", true));
}
