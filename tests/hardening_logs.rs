//! Secrets never reach the logs, even at `log.level = "debug"` (every crate's debug
//! output included): the real binary runs a set of flows — APNs and FCM pushes through
//! their real transports against the simulators, a decision, an SMS code sent through the
//! webhook gateway, a wrong code and the right one, a long poll — with a broker user and
//! password of this test's own, and its whole output is searched for every device token,
//! the phone number, the code, the bearer token, the AMQP password, the SMS gateway's
//! token and any JWT.

mod common;

use common::*;
use futures_util::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions};
use sca_dispatch::sim::fcm::{FcmSim, FcmSimOptions};
use sca_dispatch::sim::sms::{Shape, SmsSim, SmsSimOptions};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATIENCE: Duration = Duration::from_secs(20);

fn ctl() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/sbin/rabbitmqctl").exists() {
            "/usr/sbin/rabbitmqctl".into()
        } else {
            "rabbitmqctl".into()
        }
    })
}

/// A vhost and a user with a password of this test's own; removed when dropped.
struct BrokerUser {
    vhost: String,
    user: String,
    password: String,
}

impl BrokerUser {
    fn create() -> BrokerUser {
        let tag = format!("{}-{}", std::process::id(), rand::random::<u32>());
        let b = BrokerUser {
            vhost: format!("sca-edge-logs-{tag}"),
            user: format!("sca-edge-logs-{tag}"),
            password: format!("amqp-pw-{:032x}", rand::random::<u128>()),
        };
        let run = |args: &[&str], stdin: Option<&str>| {
            let mut c = Command::new(ctl());
            c.arg("--quiet").args(args).stdout(Stdio::null());
            c.stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
            let mut child = c.spawn().expect("rabbitmqctl runs");
            if let Some(s) = stdin {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
            }
            assert!(child.wait().unwrap().success(), "rabbitmqctl {args:?}");
        };
        run(&["add_vhost", &b.vhost], None);
        run(&["add_user", &b.user], Some(&b.password));
        run(
            &["set_permissions", "-p", &b.vhost, &b.user, ".*", ".*", ".*"],
            None,
        );
        b
    }

    fn url(&self) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:5672/{}",
            self.user,
            self.password,
            urlencoding::encode(&self.vhost)
        )
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        for args in [
            vec!["delete_user", self.user.as_str()],
            vec!["delete_vhost", self.vhost.as_str()],
        ] {
            let _ = Command::new(ctl())
                .arg("--quiet")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn http(
    port: u16,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or_else(|_| Value::String(b.into())))
        .unwrap_or(Value::Null);
    (status, body)
}

/// Occurrences of `code` in `log` as a number of its own: not inside a longer number nor
/// the fraction of a timestamp (`12.345678Z`), where six digits turn up by chance.
fn code_occurrences(log: &str, code: &str) -> usize {
    let b = log.as_bytes();
    log.match_indices(code)
        .filter(|(i, _)| {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + code.len()).copied();
            !before.is_some_and(|c| c.is_ascii_digit() || c == b'.')
                && !after.is_some_and(|c| c.is_ascii_digit())
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_debug_logs() {
    let broker = BrokerUser::create();
    let apns_sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let fcm_sim = FcmSim::start(FcmSimOptions::default()).await.unwrap();
    let sms_sim = SmsSim::start(SmsSimOptions::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();

    let api_token = format!("bearer-{:032x}", rand::random::<u128>());
    let (http_port, metrics_port) = (free_port(), free_port());
    let mut cfg = test_config(&unique("logs"));
    cfg.amqp.url = broker.url();
    cfg.http.addr = format!("127.0.0.1:{http_port}");
    cfg.metrics.addr = format!("127.0.0.1:{metrics_port}");
    cfg.http.api_tokens = api_token.clone();
    cfg.log.level = "debug".into();
    cfg.apns = apns_sim.config();
    cfg.fcm = fcm_sim.write_config_files(dir.path()).unwrap();
    cfg.sms = sms_sim.config(Shape::Webhook);
    let sms_token = cfg.sms.auth_token.clone();
    assert!(!sms_token.is_empty());
    let path = dir.path().join("sca.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let log_path = dir.path().join("daemon.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("SCA_LOG_LEVEL")
        .env_remove("RUST_LOG")
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("daemon binary runs");
    let mut reap = Reap(child.id(), true);

    // A debug build's start-up on a loaded machine: a generous deadline.
    let mut ready = false;
    for _ in 0..1200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", http_port))
            .await
            .is_ok()
            && http(http_port, "GET", "/readyz", &api_token, None).await.0 == 200
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "daemon ready");

    let conn = sca_dispatch::amqp::client::connect(&broker.url(), "sca-dispatch logs test")
        .await
        .unwrap();
    let mut outcomes = tap(&conn, &cfg.amqp.outcomes_exchange).await;
    let ch = conn.create_channel().await.unwrap();
    let publish = |v: Value| {
        let ch = ch.clone();
        let q = cfg.amqp.challenges_queue.clone();
        async move {
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                v.to_string().as_bytes(),
                Default::default(),
            )
            .await
            .unwrap();
        }
    };

    let apns_tok = apns_token(0x5e);
    let fcm_tok = format!("fcm-secret-{:024x}", rand::random::<u128>());
    let phone = "+393471234987";
    // 1. Pushes to both platforms, approved by a device.
    let mut push = challenge("logs-push");
    push["devices"] = json!([
        {"device_id": "d-iphone", "platform": "apns", "token": apns_tok, "name": "iPhone"},
        {"device_id": "d-pixel", "platform": "fcm", "token": fcm_tok, "name": "Pixel"}
    ]);
    push["sms"]["phone"] = json!(phone);
    publish(push).await;
    // 2. No device: the SMS goes out at once; a wrong code, then the right one.
    let mut sms = challenge("logs-sms");
    sms["devices"] = json!([]);
    sms["sms"]["phone"] = json!(phone);
    publish(sms).await;

    apns_sim.wait_for_pushes(1, PATIENCE).await.unwrap();
    assert!(fcm_sim.wait_for_delivered(1, PATIENCE).await);
    let (st, _) = http(
        http_port,
        "GET",
        "/v1/challenges/logs-push?wait=0.2",
        &api_token,
        None,
    )
    .await;
    assert_eq!(st, 200);
    let (st, _) = http(
        http_port,
        "POST",
        "/v1/challenges/logs-push/decision",
        &api_token,
        Some(json!({"device_id": "d-pixel", "decision": "approve"})),
    )
    .await;
    assert_eq!(st, 200);

    sms_sim.wait_for_messages(1, PATIENCE).await.unwrap();
    let text = sms_sim.messages()[0].text.clone();
    let code = text
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| w.len() == 6)
        .expect("a code in the SMS")
        .to_string();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let (st, _) = http(
        http_port,
        "POST",
        "/v1/challenges/logs-sms/otp",
        &api_token,
        Some(json!({"code": wrong})),
    )
    .await;
    assert_eq!(st, 401);
    let (st, _) = http(
        http_port,
        "POST",
        "/v1/challenges/logs-sms/otp",
        &api_token,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(st, 200);

    // 3. A refused challenge while nobody is bound to the dead-letter exchange: the
    //    broker returns the dead letter (which carries the refused body, tokens and
    //    number included) until the queue is bound again.
    let a = &cfg.amqp;
    ch.queue_unbind(
        a.dead_queue.as_str().into(),
        a.dead_exchange.as_str().into(),
        "".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut bad = challenge("logs-refused");
    bad["devices"] = json!([
        {"device_id": "d-iphone", "platform": "apns", "token": apns_tok, "name": "iPhone"}
    ]);
    bad["sms"]["phone"] = json!(phone);
    bad["ttl_seconds"] = json!(5);
    publish(bad).await;
    let returned = format!(
        "sca_amqp_unroutable_total{{exchange=\"{}\"}}",
        a.dead_exchange
    );
    let mut was_returned = false;
    for _ in 0..400 {
        let (_, m) = http(metrics_port, "GET", "/metrics", &api_token, None).await;
        if m.as_str().is_some_and(|m| m.contains(&returned)) {
            was_returned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(was_returned, "the dead letter was returned at least once");
    ch.queue_bind(
        a.dead_queue.as_str().into(),
        a.dead_exchange.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut dead = None;
    for _ in 0..400 {
        dead = ch
            .basic_get(
                a.dead_queue.as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(dead.is_some(), "the dead letter arrived once bound");

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let d = tokio::time::timeout(PATIENCE, outcomes.next())
            .await
            .expect("outcomes in time")
            .unwrap()
            .unwrap();
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        let want = if v["challenge_id"] == "logs-refused" {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(v["outcome"], want, "{v}");
        seen.push(v["challenge_id"].as_str().unwrap().to_string());
    }

    // A graceful stop, so everything the daemon logs is written.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut stopped = false;
    for _ in 0..400 {
        if child.try_wait().unwrap().is_some() {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if !stopped {
        let _ = child.kill();
        let _ = child.wait();
    }
    reap.1 = false;
    for q in [&a.challenges_queue, &a.responses_queue, &a.dead_queue] {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("DEBUG") && log.lines().count() > 20,
        "the daemon logged at debug ({} lines)",
        log.lines().count()
    );
    let national = &phone[3..];
    for (what, secret) in [
        ("APNs device token", apns_tok.as_str()),
        ("FCM device token", fcm_tok.as_str()),
        ("phone number", phone),
        ("phone number without its prefix", national),
        ("bearer token", api_token.as_str()),
        ("AMQP password", broker.password.as_str()),
        ("SMS gateway token", sms_token.as_str()),
    ] {
        // As text, and as the byte list a `Debug` of a message body prints.
        let as_bytes = secret
            .bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        assert!(!log.contains(&as_bytes), "{what} in the log as bytes");
        let at = log.find(secret);
        assert!(
            at.is_none(),
            "{what} in the log: …{}…",
            &log[at.unwrap().saturating_sub(200)..(at.unwrap() + 100).min(log.len())]
        );
    }
    for c in [code.as_str(), wrong] {
        assert_eq!(code_occurrences(&log, c), 0, "code {c} in the log");
    }
    assert!(
        !log.contains("eyJ"),
        "a JWT (provider or OAuth token) in the log"
    );
    println!(
        "debug log: {} lines, {} bytes, no secret found",
        log.lines().count(),
        log.len()
    );
}

/// Kills the daemon (pid, armed) when the test fails before it stopped it, so that no
/// daemon outlives a failed run.
struct Reap(u32, bool);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}
