//! The SMS gateways (`twilio`, `webhook`) against the SMS simulator over real HTTP:
//! delivery and the recorded fields, retries on 503/429/stalls through `sms::deliver`,
//! permanent refusals without retry, credentials, TLS with an extra CA, and a payment's
//! localized text arriving intact.

use sca_dispatch::challenge::model::{Kind, Transaction};
use sca_dispatch::config::SmsConfig;
use sca_dispatch::sim::sms::{Behaviour, Shape, SmsSim, SmsSimOptions};
use sca_dispatch::sms::gateway::from_config;
use sca_dispatch::sms::{deliver, SmsError, SmsGateway, SmsMessage};
use std::sync::Arc;
use std::time::Duration;

const PHONE: &str = "+393401234567";
const WAIT: Duration = Duration::from_secs(10);
const SHAPES: [Shape; 2] = [Shape::Twilio, Shape::Webhook];

async fn sim() -> SmsSim {
    SmsSim::start(SmsSimOptions::default()).await.unwrap()
}

fn gateway(cfg: &SmsConfig) -> Arc<dyn SmsGateway> {
    from_config(cfg).unwrap().expect("a gateway is configured")
}

fn msg(to: &str, text: &str) -> SmsMessage {
    SmsMessage {
        to: to.into(),
        text: text.into(),
        reference: "chal-0001".into(),
    }
}

#[tokio::test]
async fn delivers_and_records_the_right_fields() {
    let sim = sim().await;
    for shape in SHAPES {
        let g = gateway(&sim.config(shape));
        assert_eq!(g.name(), shape.as_str());
        let text = format!("Code 123456 to sign in ({})", shape.as_str());
        deliver(g.as_ref(), &msg(PHONE, &text), WAIT).await.unwrap();
    }
    let got = sim.wait_for_messages(2, WAIT).await.unwrap();
    assert_eq!(got.len(), 2);
    let (t, w) = (&got[0], &got[1]);
    assert_eq!(t.shape, Shape::Twilio);
    assert_eq!(t.to, PHONE);
    assert_eq!(t.text, "Code 123456 to sign in (twilio)");
    assert_eq!(t.from.as_deref(), Some("+15005550006"));
    assert_eq!(t.reference, None);
    assert!(t.id.starts_with("SM") && t.id.len() == 34, "{}", t.id);
    assert_eq!(w.shape, Shape::Webhook);
    assert_eq!(w.to, PHONE);
    assert_eq!(w.text, "Code 123456 to sign in (webhook)");
    assert_eq!(w.reference.as_deref(), Some("chal-0001"));
    assert_eq!(w.from, None);
    assert_eq!(sim.attempts(PHONE), 2);
    assert_eq!(sim.unauthorized_requests(), 0);
}

#[tokio::test]
async fn unavailable_twice_then_delivered() {
    let sim = sim().await;
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let phone = format!("+3934000000{i}1");
        sim.script(&phone, Behaviour::unavailable(2));
        let g = gateway(&sim.config(shape));
        deliver(g.as_ref(), &msg(&phone, "Code 111111"), WAIT)
            .await
            .unwrap();
        let statuses: Vec<Option<u16>> = sim
            .requests()
            .iter()
            .filter(|r| r.to == phone)
            .map(|r| r.status)
            .collect();
        let ok = if shape == Shape::Twilio { 201 } else { 200 };
        assert_eq!(statuses, vec![Some(503), Some(503), Some(ok)], "{shape:?}");
    }
    assert_eq!(sim.total_messages(), 2);
}

#[tokio::test]
async fn rate_limited_with_retry_after_is_honoured() {
    let sim = sim().await;
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let phone = format!("+3934000000{i}2");
        sim.script(
            &phone,
            Behaviour::RateLimit {
                times: 1,
                retry_after: Duration::from_secs(1),
            },
        );
        let g = gateway(&sim.config(shape));
        let m = msg(&phone, "Code 222222");
        // One attempt shows the hint is read...
        match g.send(&m).await {
            Err(SmsError::Retryable { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(1)), "{shape:?}")
            }
            other => panic!("{shape:?}: want a retryable 429, got {other:?}"),
        }
        // ...and `deliver` waits for it before trying again.
        sim.script(
            &phone,
            Behaviour::RateLimit {
                times: 1,
                retry_after: Duration::from_secs(1),
            },
        );
        deliver(g.as_ref(), &m, WAIT).await.unwrap();
        let at: Vec<_> = sim
            .requests()
            .iter()
            .filter(|r| r.to == phone)
            .map(|r| (r.at, r.status))
            .collect();
        assert_eq!(at.len(), 3, "{shape:?}");
        assert_eq!(at[1].1, Some(429));
        assert!(
            at[2].0.duration_since(at[1].0) >= Duration::from_secs(1),
            "{shape:?}: retried before Retry-After"
        );
    }
}

#[tokio::test]
async fn permanent_refusal_is_not_retried() {
    let sim = sim().await;
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let phone = format!("+3934000000{i}3");
        sim.script(&phone, Behaviour::Reject);
        let g = gateway(&sim.config(shape));
        let e = deliver(g.as_ref(), &msg(&phone, "Code 333333"), WAIT)
            .await
            .unwrap_err();
        let SmsError::Permanent(reason) = e else {
            panic!("{shape:?}: not permanent: {e:?}")
        };
        // The gateway names the full number in its error; the reason must not.
        assert!(!reason.contains(&phone[6..]), "{reason}");
        if shape == Shape::Twilio {
            assert!(reason.contains("21211"), "{reason}");
        }
        assert_eq!(sim.attempts(&phone), 1, "{shape:?} was retried");
    }
    assert_eq!(sim.total_messages(), 0);
}

#[tokio::test]
async fn wrong_credentials_are_permanent() {
    let sim = sim().await;
    for shape in SHAPES {
        let mut cfg = sim.config(shape);
        cfg.auth_token = "wrong".into();
        let g = gateway(&cfg);
        let e = deliver(g.as_ref(), &msg(PHONE, "Code 444444"), WAIT)
            .await
            .unwrap_err();
        match e {
            SmsError::Permanent(r) => {
                assert!(r.contains("401") && r.contains("sms.auth_token"), "{r}");
                assert!(!r.contains("wrong"), "the token leaked: {r}");
            }
            other => panic!("{shape:?}: {other:?}"),
        }
    }
    // A webhook gateway with no token at all, against a simulator that wants one.
    let mut cfg = sim.config(Shape::Webhook);
    cfg.auth_token.clear();
    let e = deliver(gateway(&cfg).as_ref(), &msg(PHONE, "x"), WAIT)
        .await
        .unwrap_err();
    assert!(matches!(e, SmsError::Permanent(_)), "{e:?}");
    // One request each: no retries.
    assert_eq!(sim.unauthorized_requests(), 3);
    assert_eq!(sim.total_messages(), 0);
}

#[tokio::test]
async fn webhook_without_a_token_sends_no_header() {
    let sim = SmsSim::start(SmsSimOptions {
        webhook_token: String::new(),
        ..SmsSimOptions::default()
    })
    .await
    .unwrap();
    let cfg = sim.config(Shape::Webhook);
    assert!(cfg.auth_token.is_empty());
    deliver(gateway(&cfg).as_ref(), &msg(PHONE, "Code 555555"), WAIT)
        .await
        .unwrap();
    assert_eq!(sim.wait_for_messages(1, WAIT).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_stalled_gateway_times_out_and_is_retried() {
    let sim = sim().await;
    for (i, shape) in SHAPES.into_iter().enumerate() {
        let phone = format!("+3934000000{i}4");
        sim.script(&phone, Behaviour::Stall { times: 1 });
        let mut cfg = sim.config(shape);
        cfg.request_timeout_ms = 300;
        let g = gateway(&cfg);
        deliver(g.as_ref(), &msg(&phone, "Code 666666"), WAIT)
            .await
            .unwrap();
        let statuses: Vec<Option<u16>> = sim
            .requests()
            .iter()
            .filter(|r| r.to == phone)
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses.len(), 2, "{shape:?}");
        assert_eq!(statuses[0], None, "the first request stalled");
    }
    assert_eq!(sim.total_messages(), 2);
}

#[tokio::test]
async fn a_timeout_is_retryable_and_deliver_gives_up_at_the_deadline() {
    let sim = sim().await;
    sim.script(PHONE, Behaviour::Stall { times: 100 });
    let mut cfg = sim.config(Shape::Webhook);
    cfg.request_timeout_ms = 100;
    let g = gateway(&cfg);
    let m = msg(PHONE, "Code 777777");
    match g.send(&m).await {
        Err(SmsError::Retryable { reason, .. }) => assert!(reason.contains("100 ms"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let e = deliver(g.as_ref(), &m, Duration::from_millis(700))
        .await
        .unwrap_err();
    assert!(
        matches!(e, SmsError::Permanent(ref r) if r.starts_with("gave up")),
        "{e:?}"
    );
    assert_eq!(sim.total_messages(), 0);
}

#[tokio::test]
async fn unreachable_gateway_is_retryable() {
    // Bind and drop to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = SmsConfig {
        gateway: "webhook".into(),
        endpoint: format!("http://127.0.0.1:{port}/webhook"),
        ..SmsConfig::default()
    };
    let e = gateway(&cfg).send(&msg(PHONE, "x")).await.unwrap_err();
    assert!(
        matches!(e, SmsError::Retryable { ref reason, .. } if reason.contains("cannot reach")),
        "{e:?}"
    );
}

#[tokio::test]
async fn a_payments_sms_names_amount_and_payee() {
    let sim = sim().await;
    let tx = Transaction {
        amount: "125.40".into(),
        currency: "EUR".into(),
        payee: "Mario Rossi & Figli".into(),
    };
    for (shape, locale, amount) in [
        (Shape::Twilio, "it-IT", "125,40 €"),
        (Shape::Webhook, "en", "€125.40"),
    ] {
        let text = sca_dispatch::texts::sms_text(locale, Kind::Payment, Some(&tx), "482913");
        let g = gateway(&sim.config(shape));
        deliver(g.as_ref(), &msg(PHONE, &text), WAIT).await.unwrap();
        let got = sim.messages();
        let last = got.last().unwrap();
        assert_eq!(last.text, text, "{shape:?}: the text changed on the way");
        for needle in [amount, "Mario Rossi & Figli", "482913"] {
            assert!(
                last.text.contains(needle),
                "{shape:?}: {needle} missing in {}",
                last.text
            );
        }
    }
}

#[tokio::test]
async fn concurrent_sends_share_the_pool() {
    let sim = sim().await;
    for shape in SHAPES {
        let g = gateway(&sim.config(shape));
        let mut set = tokio::task::JoinSet::new();
        for i in 0..40 {
            let g = g.clone();
            set.spawn(async move {
                let m = msg(&format!("+39340100{i:04}"), &format!("Code {i:06}"));
                deliver(g.as_ref(), &m, WAIT).await
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap().unwrap();
        }
    }
    let got = sim.wait_for_messages(80, WAIT).await.unwrap();
    assert_eq!(got.len(), 80);
    let mut twilio: Vec<_> = got
        .iter()
        .filter(|m| m.shape == Shape::Twilio)
        .map(|m| m.to.clone())
        .collect();
    twilio.sort();
    twilio.dedup();
    assert_eq!(twilio.len(), 40);
}

#[tokio::test]
async fn wait_for_messages_reports_a_shortfall() {
    let sim = sim().await;
    let e = sim
        .wait_for_messages(1, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("0 of 1"), "{e}");
}

#[tokio::test]
async fn standalone_prints_working_configs_and_masks_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut out: Vec<u8> = Vec::new();
    let run = sca_dispatch::sim::sms::run_until(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().to_path_buf(),
        async move {
            let _ = stop_rx.await;
            Ok(())
        },
        &mut out,
    );
    let client = async {
        for shape in SHAPES {
            let path = dir.path().join(format!("sms-{}.toml", shape.as_str()));
            let mut waited = Duration::ZERO;
            while !path.exists() {
                assert!(waited < WAIT, "{} never appeared", path.display());
                tokio::time::sleep(Duration::from_millis(10)).await;
                waited += Duration::from_millis(10);
            }
            let text = std::fs::read_to_string(&path).unwrap();
            // The printed section is a valid daemon configuration.
            let (cfg, _) = sca_dispatch::config::Config::parse_with_env(&text, "sim.toml", &[])
                .unwrap_or_else(|e| panic!("{}: {e}\n{text}", shape.as_str()));
            let g = gateway(&cfg.sms);
            deliver(g.as_ref(), &msg(PHONE, "Code 909090"), WAIT)
                .await
                .unwrap();
        }
        stop_tx.send(()).unwrap();
    };
    let (total, ()) = tokio::join!(run, client);
    assert_eq!(total.unwrap(), 2);
    let out = String::from_utf8(out).unwrap();
    assert!(out.contains("gateway = \"twilio\"") && out.contains("gateway = \"webhook\""));
    assert_eq!(out.matches("+39340****567").count(), 2, "{out}");
    assert!(!out.contains(PHONE), "{out}");
    assert!(
        out.contains("Code 909090") && out.contains("ref=chal-0001"),
        "{out}"
    );
    assert!(out.contains("stopped after 2 messages"), "{out}");
}

/// A TLS front (self-signed `localhost` certificate) forwarding to the plain simulator.
async fn tls_front(sim: &SmsSim) -> (u16, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    let cfg = rustls::ServerConfig::builder_with_provider(sca_dispatch::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let backend = sim.addr();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, ck.cert.pem())
}

#[tokio::test]
async fn tls_needs_the_configured_ca() {
    let sim = sim().await;
    let (port, ca_pem) = tls_front(&sim).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("sim-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut cfg = sim.config(Shape::Twilio);
    cfg.endpoint = format!("https://localhost:{port}");
    // Not trusted: permanent, no point retrying a certificate.
    let e = deliver(gateway(&cfg).as_ref(), &msg(PHONE, "Code 1"), WAIT)
        .await
        .unwrap_err();
    assert!(
        matches!(e, SmsError::Permanent(ref r) if r.contains("TLS") && r.contains("sms.ca_file")),
        "{e:?}"
    );
    assert_eq!(sim.total_messages(), 0);
    // Trusted through sms.ca_file: delivered, for both shapes.
    cfg.ca_file = ca_file.to_string_lossy().into_owned();
    deliver(gateway(&cfg).as_ref(), &msg(PHONE, "Code 2"), WAIT)
        .await
        .unwrap();
    let mut wcfg = sim.config(Shape::Webhook);
    wcfg.endpoint = format!("https://localhost:{port}/webhook");
    wcfg.ca_file = cfg.ca_file.clone();
    deliver(gateway(&wcfg).as_ref(), &msg(PHONE, "Code 3"), WAIT)
        .await
        .unwrap();
    let texts: Vec<String> = sim.messages().into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["Code 2", "Code 3"]);
}

type Headers<'a> = Vec<(&'a str, String)>;

/// Sends a raw request to the simulator; returns status and JSON body.
async fn raw(
    sim: &SmsSim,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt;
    let client = sca_dispatch::tls::json_client("").unwrap();
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("{}{path}", sim.base_url()));
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    let req = b
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn simulator_validates_like_the_real_gateways() {
    use base64::Engine;
    let sim = sim().await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            sim.account_sid(),
            sim.auth_token()
        ))
    );
    let form = |h: &str| {
        vec![
            ("authorization", h.to_string()),
            (
                "content-type",
                "application/x-www-form-urlencoded".to_string(),
            ),
        ]
    };
    let twilio_path = format!("/2010-04-01/Accounts/{}/Messages.json", sim.account_sid());
    let cases: Vec<(String, Headers, &str, u16, Option<u64>)> = vec![
        (
            twilio_path.clone(),
            form(&basic),
            "From=%2B1500&Body=hi",
            400,
            Some(21604),
        ),
        (
            twilio_path.clone(),
            form(&basic),
            "To=%2B393401234567&Body=hi",
            400,
            Some(21603),
        ),
        (
            twilio_path.clone(),
            form(&basic),
            "To=%2B393401234567&From=x",
            400,
            Some(21602),
        ),
        (
            twilio_path.clone(),
            form(&basic),
            "To=12345&From=x&Body=hi",
            400,
            Some(21211),
        ),
        (
            twilio_path.clone(),
            form("Basic Zm9vOmJhcg=="),
            "To=%2B393401234567&From=x&Body=hi",
            401,
            Some(20003),
        ),
        (
            twilio_path.clone(),
            vec![],
            "To=%2B393401234567&From=x&Body=hi",
            401,
            Some(20003),
        ),
        (
            "/2010-04-01/Accounts/ACother/Messages.json".into(),
            form(&basic),
            "To=%2B393401234567&From=x&Body=hi",
            404,
            Some(20404),
        ),
        (
            twilio_path.clone(),
            form(&basic),
            "To=%2B393401234567&From=x&Body=hi",
            201,
            None,
        ),
    ];
    for (path, headers, body, want, code) in cases {
        let (status, v) = raw(&sim, "POST", &path, &headers, body).await;
        assert_eq!(status, want, "{path} {body}: {v}");
        if let Some(code) = code {
            assert_eq!(v["code"].as_u64(), Some(code), "{body}: {v}");
            assert!(v["more_info"]
                .as_str()
                .unwrap()
                .ends_with(&code.to_string()));
        } else {
            assert!(v["sid"].as_str().unwrap().starts_with("SM"), "{v}");
            assert_eq!(v["status"], "queued");
        }
    }
    let bearer = format!("Bearer {}", sim.webhook_token());
    let json_h = |auth: &str| {
        vec![
            ("authorization", auth.to_string()),
            ("content-type", "application/json".to_string()),
        ]
    };
    let webhook_cases: Vec<(Headers, &str, u16)> = vec![
        (
            json_h(&bearer),
            r#"{"to":"+393401234567","text":"hi","reference":"c1"}"#,
            200,
        ),
        (
            json_h("Bearer nope"),
            r#"{"to":"+393401234567","text":"hi","reference":"c1"}"#,
            401,
        ),
        (
            vec![("authorization", bearer.clone())],
            r#"{"to":"+393401234567","text":"hi","reference":"c1"}"#,
            415,
        ),
        (
            json_h(&bearer),
            r#"{"to":"+393401234567","text":"hi"}"#,
            400,
        ),
        (
            json_h(&bearer),
            r#"{"to":"0039340","text":"hi","reference":"c1"}"#,
            400,
        ),
        (json_h(&bearer), "not json", 400),
    ];
    for (headers, body, want) in webhook_cases {
        let (status, v) = raw(&sim, "POST", "/webhook", &headers, body).await;
        assert_eq!(status, want, "{body}: {v}");
        if want != 200 {
            assert!(v["error"].is_string(), "{v}");
        }
    }
    let (status, _) = raw(&sim, "GET", "/webhook", &[], "").await;
    assert_eq!(status, 405);
    let (status, _) = raw(&sim, "POST", "/nowhere", &[], "").await;
    assert_eq!(status, 404);
    let (status, list) = raw(&sim, "GET", "/messages", &[], "").await;
    assert_eq!(status, 200);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["gateway"], "twilio");
    assert_eq!(list[1]["reference"], "c1");
    assert_eq!(sim.unauthorized_requests(), 3);
}
