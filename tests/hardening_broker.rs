//! The least-privilege RabbitMQ set-up of `deploy/rabbitmq/` applied to the local broker
//! (a vhost and users of this test's own, removed afterwards): the backend user may
//! publish challenges through the ingress exchange and read outcomes, and is refused on
//! the control exchange, the outcomes exchange and the partition queues; the monitoring
//! user may write nothing. Needs `rabbitmqctl` (run as a user allowed to use it).

use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use std::path::PathBuf;
use std::process::Command;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/rabbitmq")
}

/// The names and passwords this test applies; removes them when dropped.
struct Setup {
    env: Vec<(String, String)>,
    vhost: String,
    backend: (String, String),
    daemon: (String, String),
    monitor: (String, String),
}

impl Setup {
    fn apply() -> Setup {
        let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
        let pw = || format!("pw-{:032x}", rand::random::<u128>());
        let vhost = format!("sca-edge-test-{tag}");
        let backend = (format!("sca-edge-backend-{tag}"), pw());
        let daemon = (format!("sca-edge-daemon-{tag}"), pw());
        let monitor = (format!("sca-edge-monitor-{tag}"), pw());
        let env = vec![
            ("SCA_RMQ_VHOST".to_string(), vhost.clone()),
            ("SCA_RMQ_BACKEND_USER".into(), backend.0.clone()),
            ("SCA_RMQ_BACKEND_PASSWORD".into(), backend.1.clone()),
            ("SCA_RMQ_DAEMON_USER".into(), daemon.0.clone()),
            ("SCA_RMQ_DAEMON_PASSWORD".into(), daemon.1.clone()),
            ("SCA_RMQ_MONITOR_USER".into(), monitor.0.clone()),
            ("SCA_RMQ_MONITOR_PASSWORD".into(), monitor.1.clone()),
        ];
        let s = Setup {
            env,
            vhost,
            backend,
            daemon,
            monitor,
        };
        let out = s.run(&[]);
        assert!(
            out.status.success(),
            "deploy/rabbitmq/setup.sh failed (is rabbitmqctl installed and usable?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for (_, pw) in [&s.backend, &s.daemon, &s.monitor] {
            assert!(
                !all.contains(pw.as_str()),
                "the script never prints a password"
            );
        }
        s
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("bash");
        c.arg(deploy_dir().join("setup.sh")).args(args);
        if std::env::var_os("RABBITMQCTL").is_none()
            && std::path::Path::new("/usr/sbin/rabbitmqctl").exists()
        {
            c.env("RABBITMQCTL", "/usr/sbin/rabbitmqctl");
        }
        c.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .expect("bash runs")
    }

    async fn connect(&self, who: &(String, String)) -> Connection {
        let url = format!(
            "amqp://{}:{}@127.0.0.1:5672/{}",
            who.0,
            who.1,
            urlencoding::encode(&self.vhost)
        );
        sca_dispatch::amqp::client::connect(&url, "sca-dispatch permissions test")
            .await
            .unwrap_or_else(|e| panic!("{} connects: {e}", who.0))
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = self.run(&["--delete"]);
    }
}

async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch
}

/// Publishes on a fresh channel; `Err` with the broker's reason when refused.
async fn try_publish(conn: &Connection, exchange: &str, rk: &str) -> Result<(), String> {
    let ch = confirm_channel(conn).await;
    let opts = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let r = async {
        ch.basic_publish(
            exchange.into(),
            rk.into(),
            opts,
            b"{}",
            BasicProperties::default(),
        )
        .await?
        .await
    }
    .await;
    match r {
        Ok(lapin::Confirmation::Ack(None)) => Ok(()),
        Ok(other) => Err(format!("not taken: {other:?}")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_user_is_refused_on_control_and_allowed_on_challenges() {
    let s = Setup::apply();
    let backend = s.connect(&s.backend).await;
    let daemon = s.connect(&s.daemon).await;

    // Allowed: a challenge through the ingress exchange lands in the challenges queue.
    try_publish(&backend, "sca.challenges.in", "")
        .await
        .expect("the backend publishes challenges");
    try_publish(&backend, "sca.responses.in", "")
        .await
        .expect("the backend publishes responses");
    let dch = daemon.create_channel().await.unwrap();
    let got = dch
        .basic_get("sca.challenges".into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some(), "the daemon user reads the challenge");

    // Refused: the instances' control exchange, the outcomes, any queue through the
    // default exchange (so no partition queue either).
    for (exchange, rk) in [
        ("sca.control", ""),
        ("sca.outcomes", "outcome.login.approved"),
        ("sca.events", "sms.sent"),
        ("", "sca.challenges.p0"),
        ("", "sca.challenges"),
    ] {
        let e = try_publish(&backend, exchange, rk)
            .await
            .expect_err("refused");
        assert!(
            e.contains("ACCESS_REFUSED"),
            "backend on {exchange:?}/{rk}: {e}"
        );
    }

    // Reading outcomes: a queue of its own, bound to the outcomes exchange.
    let bch = backend.create_channel().await.unwrap();
    bch.queue_declare(
        "backend.outcomes".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the backend declares its own queue");
    bch.queue_bind(
        "backend.outcomes".into(),
        "sca.outcomes".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("and binds it to the outcomes");
    let mut outcomes = bch
        .basic_consume(
            "backend.outcomes".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    try_publish(&daemon, "sca.outcomes", "outcome.login.approved")
        .await
        .expect("the daemon publishes outcomes");
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), outcomes.next())
        .await
        .expect("the backend reads the outcome")
        .unwrap()
        .unwrap();
    assert_eq!(d.data, b"{}");
    // The backend cannot consume the challenges queue (read) either.
    let e = backend
        .create_channel()
        .await
        .unwrap()
        .basic_get("sca.challenges".into(), BasicGetOptions { no_ack: true })
        .await
        .expect_err("refused");
    assert!(e.to_string().contains("ACCESS_REFUSED"), "{e}");

    // The monitoring user connects but may write nothing.
    let monitor = s.connect(&s.monitor).await;
    let e = try_publish(&monitor, "sca.challenges.in", "")
        .await
        .expect_err("refused");
    assert!(e.contains("ACCESS_REFUSED"), "{e}");

    let _ = backend.close(200, "done".into()).await;
    let _ = daemon.close(200, "done".into()).await;
    let _ = monitor.close(200, "done".into()).await;
}

#[test]
fn the_broker_config_bounds_message_size_to_fit_the_contract() {
    let text = std::fs::read_to_string(deploy_dir().join("rabbitmq.conf")).unwrap();
    let v: u64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("max_message_size"))
        .and_then(|r| r.trim().strip_prefix('='))
        .expect("max_message_size is set")
        .trim()
        .parse()
        .unwrap();
    // A 16 KiB body and its headers fit; the broker's 128 MiB default is far off.
    assert!(
        (16 * 1024 + 4096..=1024 * 1024).contains(&v),
        "max_message_size = {v}"
    );
}
