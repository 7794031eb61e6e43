//! FCM throughput: messages/s from `FcmProvider` to the FCM simulator, and in the same run
//! a bare hyper client sending the same requests (same bodies, same bearer token, same
//! concurrency, the same pooled hyper-util/rustls client) as the ceiling to compare
//! against. The bare client does nothing but POST prebuilt bodies; the provider also
//! builds each body, goes through its token cache, concurrency limit, timeout and
//! classification. Two transports: plain HTTP/1.1 (a connection per concurrent request)
//! and HTTPS with HTTP/2 (requests multiplexed on one connection), as with Google.
//!
//! Run: `cargo bench --bench fcm`. Prints both rates and their ratio.

#[path = "bearer/mod.rs"]
mod bearer;

use bearer::{Bare, Device, CONCURRENCY, MESSAGES, ROUNDS};
use sca_dispatch::push::fcm::message::build_body;
use sca_dispatch::push::fcm::FcmProvider;
use sca_dispatch::sim::fcm::{FcmSim, FcmSimOptions};
use sca_dispatch::tls::json_client;
use std::sync::Arc;

const DEVICE: Device = Device {
    id: "d-pixel",
    token_prefix: "bench-token:",
};

async fn scenario(name: &str, tls: bool) {
    let sim = FcmSim::start(FcmSimOptions {
        max_recorded: 0,
        tls,
        ..FcmSimOptions::default()
    })
    .await
    .expect("simulator");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = sim.write_config_files(dir.path()).expect("config files");
    cfg.max_concurrent = CONCURRENCY as u32;
    let provider = Arc::new(FcmProvider::new(&cfg).expect("provider"));
    let bare = Bare {
        client: json_client(&cfg.ca_file).expect("client"),
        uri: format!(
            "{}/v1/projects/{}/messages:send",
            sim.endpoint(),
            sim.project_id()
        )
        .parse()
        .expect("uri"),
        bearer: http::HeaderValue::from_str(&format!("Bearer {}", sim.issue_access_token()))
            .expect("header"),
        content_type: "application/json; charset=UTF-8",
        accepted: |_| true,
    };
    let (best_provider, best_bare) =
        bearer::compare(&format!("fcm {name}"), &provider, DEVICE, bare, build_body).await;
    println!(
        "fcm {name}: best FcmProvider {best_provider:.0} msg/s, best bare hyper client {best_bare:.0} msg/s, ratio {:.2} (target >= 0.80); tokens minted {}",
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
        "fcm: {MESSAGES} messages x {ROUNDS} rounds per transport, concurrency {CONCURRENCY}, simulator on loopback in the same process"
    );
    rt.block_on(scenario("http/1.1", false));
    rt.block_on(scenario("https h2", true));
}
