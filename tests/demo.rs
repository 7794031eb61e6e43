//! The demo is the README's first command: it must keep working end to end.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_scenario_ends_as_expected() {
    let opts = sca_dispatch::demo::DemoOptions {
        amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        load: Some(50),
        duration: Some(std::time::Duration::from_secs(2)),
    };
    assert!(sca_dispatch::demo::run(opts).await.expect("demo runs"));
}
