//! `sca-dispatch load` end to end: a daemon in this process on the real RabbitMQ, pointed
//! at the load tool's simulators; a short run with approvals, denials and SMS codes must
//! lose nothing and produce the documented report.

mod common;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use sca_dispatch::loadgen::mix::{Answer, Shares};
use sca_dispatch::loadgen::sims::{SimOptions, Sims};
use sca_dispatch::loadgen::{self, LoadOptions};
use std::time::Duration;

const N: u64 = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_load_loses_nothing_and_reports_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let sims = Sims::start(&SimOptions {
        apns_addr: "127.0.0.1:0".parse().unwrap(),
        fcm_addr: "127.0.0.1:0".parse().unwrap(),
        hms_addr: "127.0.0.1:0".parse().unwrap(),
        sms_addr: "127.0.0.1:0".parse().unwrap(),
        dir: dir.path().join("sim"),
        fcm_tls: false,
    })
    .await
    .unwrap();
    let toml = sims.config_toml();
    for section in ["[apns]", "[fcm]", "[hms]", "[sms]"] {
        assert!(toml.contains(section), "{section} missing: {toml}");
    }

    let mut cfg = common::test_config(&common::unique("load"));
    sims.apply(&mut cfg);
    let token = format!("load-test-{:016x}", rand::random::<u64>());
    cfg.http.api_tokens = token.clone();
    cfg.limits.challenges_per_minute = 1_000_000;
    cfg.limits.challenge_burst = 1_000_000;
    let settings = cfg.validate().unwrap();
    let providers = sca_dispatch::daemon::providers_from_config(&settings).unwrap();
    let daemon = sca_dispatch::Daemon::start(settings, providers)
        .await
        .unwrap();
    let api = format!("http://{}", daemon.http_addr);
    loadgen::cli::wait_ready(std::slice::from_ref(&api), Duration::from_secs(20))
        .await
        .unwrap();

    let mut o = LoadOptions::new(&cfg.amqp.url, &api);
    o.challenges_queue = cfg.amqp.challenges_queue.clone();
    o.outcomes_exchange = cfg.amqp.outcomes_exchange.clone();
    o.api_token = Some(token);
    o.rate = Some(300.0);
    o.count = Some(N);
    o.duration = Some(Duration::from_secs(30));
    o.devices_per_challenge = 2;
    // Huawei devices too: they see their pushes on the Push Kit simulator's feed.
    o.platforms = Shares::parse("apns=1,fcm=1,hms=1").unwrap();
    o.answers = Shares::parse("approve=8,deny=1,ignore=1").unwrap();
    // Every challenge has SMS: an ignored push ends by the SMS code after 1 s.
    o.sms_share = 1.0;
    o.sms_fallback_seconds = 1;
    o.payload_bytes = Some(2048);
    o.decide_after = Duration::from_millis(20);
    o.drain = Duration::from_secs(30);
    o.print_seconds = false;
    let denials = (0..N)
        .filter(|&s| loadgen::challenge(&o, "x", s).1.answer == Answer::Deny)
        .count() as u64;
    let ignored = (0..N)
        .filter(|&s| loadgen::challenge(&o, "x", s).1.answer == Answer::Ignore)
        .count() as u64;
    assert!(denials > 0 && ignored > 0);

    let report = loadgen::run(o, sims.feeds()).await.unwrap();
    let j = &report.json;
    assert!(sims.hms.delivered_count() > 0, "no Push Kit message");
    assert_eq!(report.lost(), 0, "{j:#}");
    assert_eq!(report.unfinished(), 0, "{j:#}");
    assert_eq!(j["published"], N);
    assert_eq!(j["outcomes"], N);
    assert_eq!(j["errors"]["total"], 0, "{j:#}");
    // Every ignored push is followed by an SMS (a slow device's may be too).
    assert!(j["sms"].as_u64().unwrap() >= ignored, "{j:#}");
    // Outcomes by kind add up; denials are exactly the devices that denied, everything
    // else was approved (by push or by SMS code).
    let mut approved = 0;
    let mut denied = 0;
    let mut total = 0;
    for (_, m) in j["outcomes_by_kind"].as_object().unwrap() {
        for (outcome, n) in m.as_object().unwrap() {
            let n = n.as_u64().unwrap();
            total += n;
            match outcome.as_str() {
                "approved" => approved += n,
                "denied" => denied += n,
                other => panic!("unexpected outcome {other}: {j:#}"),
            }
        }
    }
    assert_eq!((total, denied, approved), (N, denials, N - denials));
    for stage in [
        "publish_to_push",
        "push_to_decision",
        "decision_to_outcome",
        "publish_to_outcome",
    ] {
        let l = &j["latency"][stage];
        for k in ["count", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"] {
            assert!(l[k].is_number(), "{stage}.{k}: {j:#}");
        }
        assert!(l["count"].as_u64().unwrap() > 0, "{stage}");
    }
    assert_eq!(j["latency"]["publish_to_outcome"]["count"], N);
    // SMS codes are entered no earlier than the fallback.
    assert!(
        j["latency"]["publish_to_outcome"]["max_ms"]
            .as_f64()
            .unwrap()
            >= 1000.0
    );
    for k in ["offered_per_s", "published_per_s", "outcomes_per_s"] {
        assert!(j["rates"][k].is_number(), "{k}");
    }
    // The daemon listens in this process: found from its API port, measured from /proc.
    if std::path::Path::new("/proc/self/stat").exists() {
        assert_eq!(j["daemon"]["pids"][0], std::process::id());
        assert!(j["daemon"]["rss_bytes"].as_u64().unwrap() > 0);
        assert!(j["daemon"]["cpu_us_per_challenge"].is_number());
    }
    assert!(j["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(!report.rows.is_empty());

    let out = dir.path().join("report");
    report.write(&out, "test").unwrap();
    let svg = std::fs::read_to_string(out.with_extension("svg")).unwrap();
    assert!(svg.starts_with("<svg ") && svg.contains("approved"));
    let back: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(&back, j);

    daemon.shutdown();
    daemon.wait().await;
    let (_conn, ch) = common::amqp().await;
    let a = &cfg.amqp;
    for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [
        &a.outcomes_exchange,
        &a.events_exchange,
        &a.dead_exchange,
        &a.control_exchange,
    ] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    sims.shutdown().await;
}

#[test]
fn the_command_line_options_are_checked() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: loadgen::cli::LoadArgs,
    }
    let parse = |args: &[&str]| {
        let mut v = vec!["load"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.load.options())
    };
    assert!(parse(&["--duration", "5"]).is_err(), "--api is required");
    let o = parse(&[
        "--api",
        "http://127.0.0.1:8080/",
        "--count",
        "10",
        "--sms-share",
        "25",
        "--answers",
        "approve=3,ignore=1",
    ])
    .unwrap()
    .unwrap();
    assert_eq!(o.api, vec!["http://127.0.0.1:8080".to_string()]);
    assert_eq!(o.sms_share, 0.25);
    assert_eq!(o.rate, None, "no --rate: flat out");
    let e = parse(&[
        "--api",
        "http://x:1",
        "--count",
        "1",
        "--platforms",
        "wns=1",
    ])
    .unwrap()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("--platforms") && e.contains("unknown platform"),
        "{e}"
    );
    let e = parse(&["--api", "http://x:1", "--count", "1", "--sms-share", "150"])
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--sms-share"), "{e}");
}
