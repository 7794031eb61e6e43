//! The chaos runner's short run: one daemon process at 50 challenges/s through every
//! fault that needs no cluster, a few seconds each. Nothing accepted may be lost and no
//! challenge may get two different outcomes; every fault must have taken effect. It stops
//! and starts the shared RabbitMQ, so the broker is started again whatever happens (the
//! runner's own guard, and this test's).

use sca_dispatch::chaos::faults::FaultKind;
use sca_dispatch::chaos::{report, run, ChaosOptions};
use sca_dispatch::loadgen::mix::Shares;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts the RabbitMQ application when dropped (a no-op when it runs).
struct BrokerBack;

impl Drop for BrokerBack {
    fn drop(&mut self) {
        for args in [&["start_app"][..], &["await_startup"][..]] {
            let _ = Command::new("rabbitmqctl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn evidence(r: &report::Row, key: &str) -> u64 {
    r.phase
        .evidence
        .get(key)
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_loses_nothing_and_contradicts_nothing() {
    let _broker = BrokerBack;
    let dir = tempfile::tempdir().unwrap();
    let mut o = ChaosOptions::new(env!("CARGO_BIN_EXE_sca-dispatch").into(), dir.path().into());
    o.rate = 50.0;
    o.faults = FaultKind::single_instance();
    o.fault_time = Duration::from_secs(3);
    o.warmup = Duration::from_secs(3);
    o.settle = Duration::from_secs(3);
    o.ttl_seconds = 10;
    // Enough ignored pushes with SMS that the gateway is called during its outage.
    o.sms_share = 0.5;
    o.answers = Shares::parse("approve=7,deny=1,ignore=2").unwrap();
    o.verbose = false;
    // Generous: a loaded 2-core machine; the run itself takes about a minute.
    let r = tokio::time::timeout(Duration::from_secs(600), run(o))
        .await
        .expect("the run ended")
        .expect("the run completed");
    let table = report::table(&r.rows);
    println!("{table}");
    assert_eq!(
        r.rows.len(),
        1 + FaultKind::single_instance().len(),
        "{table}"
    );
    for row in &r.rows {
        let f = &row.figures;
        assert!(
            f.accepted > 0,
            "{}: nothing accepted\n{table}",
            row.phase.name
        );
        assert_eq!(
            f.lost, 0,
            "{}: lost {:?}\n{table}",
            row.phase.name, f.lost_ids
        );
        assert_eq!(
            f.contradictory, 0,
            "{}: contradictory {:?}\n{table}",
            row.phase.name, f.contradictory_ids
        );
        assert!(
            row.phase.happened,
            "{}: no trace of the fault\n{table}",
            row.phase.name
        );
    }
    let row = |f: FaultKind| r.row(f).unwrap();
    let k = row(FaultKind::Sigkill);
    assert_ne!(evidence(k, "pid_killed"), 0);
    assert_ne!(evidence(k, "pid_killed"), evidence(k, "pid_restarted"));
    let b = row(FaultKind::BrokerRestart);
    assert_eq!(b.phase.evidence["stop_app"], true);
    assert!(evidence(row(FaultKind::ConnectionClose), "connections_closed") >= 1);
    assert!(evidence(row(FaultKind::Apns503), "apns_503_answers") > 0);
    assert!(evidence(row(FaultKind::ApnsStall), "apns_stalled_requests") > 0);
    assert!(evidence(row(FaultKind::FcmTokenDown), "token_requests_refused") > 0);
    assert!(evidence(row(FaultKind::SmsDown), "sms_503_answers") > 0);
    assert_eq!(r.json["targets_met"], true);
}
