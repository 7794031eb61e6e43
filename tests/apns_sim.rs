//! The APNs simulator on its own, driven by a bare HTTP/2 client: it must check what
//! Apple checks and answer as Apple does.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sca_dispatch::push::apns::jwt;
use sca_dispatch::sim::apns::{ApnsSim, ApnsSimOptions, Behaviour};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn token(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn client(sim: &ApnsSim, alpn: &[&[u8]]) -> Result<SendRequest<Full<Bytes>>, String> {
    let tls = sca_dispatch::tls::client_config(&sim.ca_pem_path().display().to_string(), alpn)
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(sim.addr())
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(send)
}

struct Req {
    method: http::Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

fn good(sim: &ApnsSim, bearer: &str) -> Req {
    Req {
        method: http::Method::POST,
        path: format!("/3/device/{}", token(1)),
        headers: vec![
            ("authorization", format!("bearer {bearer}")),
            ("apns-topic", sim.topic().to_string()),
            ("apns-push-type", "alert".into()),
            ("apns-priority", "10".into()),
            ("apns-expiration", "0".into()),
            ("apns-collapse-id", "c1".into()),
        ],
        body: br#"{"aps":{"alert":{"title":"t","body":"b"}}}"#.to_vec(),
    }
}

fn without(mut r: Req, name: &str) -> Req {
    r.headers.retain(|(n, _)| *n != name);
    r
}

fn with(mut r: Req, name: &'static str, value: &str) -> Req {
    r.headers.retain(|(n, _)| *n != name);
    r.headers.push((name, value.to_string()));
    r
}

async fn send(
    c: &mut SendRequest<Full<Bytes>>,
    sim: &ApnsSim,
    r: Req,
) -> (u16, Option<String>, serde_json::Value) {
    let mut b = http::Request::builder().method(r.method).uri(format!(
        "https://localhost:{}{}",
        sim.addr().port(),
        r.path
    ));
    for (n, v) in r.headers {
        b = b.header(n, v);
    }
    let resp = c
        .send_request(b.body(Full::new(Bytes::from(r.body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("apns-id")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body).unwrap()
    };
    (status, id, json)
}

fn reason(v: &serde_json::Value) -> &str {
    v["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn answers_like_apple() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let key = jwt::load_key(&sim.key_path().display().to_string()).unwrap();
    let jwt_now = jwt::sign(&key, sim.key_id(), sim.team_id(), unix_now());
    let mut c = client(&sim, &[b"h2"]).await.unwrap();

    let (status, id, body) = send(&mut c, &sim, good(&sim, &jwt_now)).await;
    assert_eq!(status, 200);
    assert_eq!(body, serde_json::Value::Null);
    let id = id.expect("apns-id on every answer");
    assert_eq!(id.len(), 36);

    // apns-id is echoed when the provider sets one.
    let given = "123E4567-E89B-12D3-A456-4266554400AA";
    let (_, id, _) = send(&mut c, &sim, with(good(&sim, &jwt_now), "apns-id", given)).await;
    assert_eq!(id.as_deref(), Some(given));

    let other_key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let cases: Vec<(Req, u16, &str)> = vec![
        (
            without(good(&sim, &jwt_now), "authorization"),
            403,
            "MissingProviderToken",
        ),
        (
            good(
                &sim,
                &jwt::sign(&other_key, sim.key_id(), sim.team_id(), unix_now()),
            ),
            403,
            "InvalidProviderToken",
        ),
        (
            good(
                &sim,
                &jwt::sign(&key, "OTHERKEY01", sim.team_id(), unix_now()),
            ),
            403,
            "InvalidProviderToken",
        ),
        (
            good(
                &sim,
                &jwt::sign(&key, sim.key_id(), "OTHERTEAM1", unix_now()),
            ),
            403,
            "InvalidProviderToken",
        ),
        (good(&sim, "not.a.jwt"), 403, "InvalidProviderToken"),
        (
            good(
                &sim,
                &jwt::sign(&key, sim.key_id(), sim.team_id(), unix_now() - 7200),
            ),
            403,
            "ExpiredProviderToken",
        ),
        (
            without(good(&sim, &jwt_now), "apns-topic"),
            400,
            "MissingTopic",
        ),
        (
            with(good(&sim, &jwt_now), "apns-topic", "com.other"),
            400,
            "TopicDisallowed",
        ),
        (
            without(good(&sim, &jwt_now), "apns-push-type"),
            400,
            "InvalidPushType",
        ),
        (
            with(good(&sim, &jwt_now), "apns-push-type", "shout"),
            400,
            "InvalidPushType",
        ),
        (
            with(good(&sim, &jwt_now), "apns-priority", "7"),
            400,
            "BadPriority",
        ),
        (
            with(
                with(good(&sim, &jwt_now), "apns-push-type", "background"),
                "apns-priority",
                "10",
            ),
            400,
            "BadPriority",
        ),
        (
            with(good(&sim, &jwt_now), "apns-expiration", "soon"),
            400,
            "BadExpirationDate",
        ),
        (
            with(good(&sim, &jwt_now), "apns-collapse-id", &"c".repeat(65)),
            400,
            "BadCollapseId",
        ),
        (
            with(good(&sim, &jwt_now), "apns-id", "nope"),
            400,
            "BadMessageId",
        ),
        (
            {
                let mut r = good(&sim, &jwt_now);
                r.headers.push(("apns-topic", sim.topic().to_string()));
                r
            },
            400,
            "DuplicateHeaders",
        ),
        (
            Req {
                path: format!("/3/device/{}", &token(1)[..63]),
                ..good(&sim, &jwt_now)
            },
            400,
            "BadDeviceToken",
        ),
        (
            Req {
                path: format!("/3/device/{}", "zz".repeat(32)),
                ..good(&sim, &jwt_now)
            },
            400,
            "BadDeviceToken",
        ),
        (
            Req {
                path: "/3/device/".into(),
                ..good(&sim, &jwt_now)
            },
            400,
            "MissingDeviceToken",
        ),
        (
            Req {
                path: "/4/anything".into(),
                ..good(&sim, &jwt_now)
            },
            404,
            "BadPath",
        ),
        (
            Req {
                method: http::Method::GET,
                ..good(&sim, &jwt_now)
            },
            405,
            "MethodNotAllowed",
        ),
        (
            Req {
                body: Vec::new(),
                ..good(&sim, &jwt_now)
            },
            400,
            "PayloadEmpty",
        ),
        (
            Req {
                body: format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4100)).into_bytes(),
                ..good(&sim, &jwt_now)
            },
            413,
            "PayloadTooLarge",
        ),
    ];
    for (req, want_status, want_reason) in cases {
        let (status, id, body) = send(&mut c, &sim, req).await;
        assert_eq!((status, reason(&body)), (want_status, want_reason));
        assert!(id.is_some());
    }
    // Exactly 4096 bytes is accepted.
    let mut body = format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4096));
    while body.len() > 4096 {
        body = body.replacen('x', "", 1);
    }
    assert_eq!(body.len(), 4096);
    let (status, _, _) = send(
        &mut c,
        &sim,
        Req {
            body: body.into_bytes(),
            ..good(&sim, &jwt_now)
        },
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn scripts_per_device_token() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let key = jwt::load_key(&sim.key_path().display().to_string()).unwrap();
    let bearer = jwt::sign(&key, sim.key_id(), sim.team_id(), unix_now());
    let mut c = client(&sim, &[b"h2"]).await.unwrap();
    let to = |n: u8| Req {
        path: format!("/3/device/{}", token(n)),
        ..good(&sim, &bearer)
    };

    sim.script(&token(1), Behaviour::Unregistered);
    for _ in 0..2 {
        let (status, _, body) = send(&mut c, &sim, to(1)).await;
        assert_eq!((status, reason(&body)), (410, "Unregistered"));
        assert!(
            body["timestamp"].as_u64().unwrap() > 1_600_000_000_000,
            "ms since epoch"
        );
    }
    sim.script(&token(2), Behaviour::TooManyRequests { times: 2 });
    let statuses = [
        send(&mut c, &sim, to(2)).await.0,
        send(&mut c, &sim, to(2)).await.0,
        send(&mut c, &sim, to(2)).await.0,
    ];
    assert_eq!(statuses, [429, 429, 200]);
    sim.script(&token(3), Behaviour::Latency(Duration::from_millis(150)));
    let t = std::time::Instant::now();
    assert_eq!(send(&mut c, &sim, to(3)).await.0, 200);
    assert!(t.elapsed() >= Duration::from_millis(150));
    sim.clear_script(&token(3));

    // A stalled push never answers, and does not block the others on the connection.
    sim.script(&token(4), Behaviour::Stall { times: 1 });
    let stalled = tokio::time::timeout(Duration::from_millis(300), send(&mut c, &sim, to(4))).await;
    assert!(stalled.is_err());
    assert_eq!(send(&mut c, &sim, to(5)).await.0, 200);
    assert_eq!(send(&mut c, &sim, to(4)).await.0, 200, "stalled once only");

    let all = sim
        .wait_for_pushes(9, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(all.len(), 9);
    assert_eq!(all.iter().filter(|p| p.status == 0).count(), 1);
    assert!(sim
        .wait_for_pushes(10, Duration::from_millis(50))
        .await
        .is_err());
}

#[tokio::test]
async fn only_http2_is_spoken() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    assert!(client(&sim, &[b"http/1.1"]).await.is_err());
}

#[tokio::test]
async fn files_are_written_and_temporary_ones_removed() {
    let sim = ApnsSim::start(ApnsSimOptions::default()).await.unwrap();
    let dir = sim.dir().to_path_buf();
    assert!(sim.ca_pem().contains("BEGIN CERTIFICATE"));
    assert_eq!(
        std::fs::read_to_string(sim.ca_pem_path()).unwrap(),
        sim.ca_pem()
    );
    assert!(jwt::load_key(&sim.key_path().display().to_string()).is_ok());
    let toml = sim.config_toml();
    assert!(toml.starts_with("[apns]\n"));
    // The printed section is a valid configuration pointing at this simulator.
    let (cfg, _) = sca_dispatch::config::Config::parse_with_env(&toml, "sim.toml", &[]).unwrap();
    assert!(
        cfg.apns.settings().unwrap().is_some(),
        "a configured APNs section"
    );
    assert_eq!(cfg.apns.endpoint, sim.endpoint());
    assert_eq!(cfg.apns.ca_file, sim.ca_pem_path().display().to_string());
    assert_eq!(cfg.apns.key_file, sim.key_path().display().to_string());
    assert_eq!(cfg.apns.key_id, sim.key_id());
    assert_eq!(cfg.apns.team_id, sim.team_id());
    assert_eq!(cfg.apns.topic, sim.topic());
    sim.shutdown().await;
    assert!(!dir.exists());

    let kept = tempfile::tempdir().unwrap();
    let sim = ApnsSim::start(ApnsSimOptions {
        dir: Some(kept.path().to_path_buf()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(kept.path().join("ca.pem").exists());
    assert!(kept.path().join("AuthKey_SIMKEY0001.p8").exists());
    drop(sim);
    assert!(
        kept.path().join("ca.pem").exists(),
        "a given directory is kept"
    );
}

#[tokio::test]
async fn control_api_scripts_and_reports() {
    use hyper_util::client::legacy::Client;
    let sim = ApnsSim::start(ApnsSimOptions {
        control_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await
    .unwrap();
    let ctl = format!("http://{}", sim.control_addr().unwrap());
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let call = |method: &str, path: &str, body: &str| {
        let req = http::Request::builder()
            .method(method)
            .uri(format!("{ctl}{path}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        let http = http.clone();
        async move {
            let resp = http.request(req).await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let path = format!("/scripts/{}", token(1));
    let (s, _) = call(
        "PUT",
        &path,
        r#"{"behaviour":"service_unavailable","times":1}"#,
    )
    .await;
    assert_eq!(s, 200);
    let (s, e) = call("PUT", &path, r#"{"behaviour":"explode"}"#).await;
    assert_eq!(s, 422, "{e}");
    // The refused script did not replace the good one.
    let key = jwt::load_key(&sim.key_path().display().to_string()).unwrap();
    let bearer = jwt::sign(&key, sim.key_id(), sim.team_id(), unix_now());
    let mut c = client(&sim, &[b"h2"]).await.unwrap();
    assert_eq!(send(&mut c, &sim, good(&sim, &bearer)).await.0, 503);
    assert_eq!(send(&mut c, &sim, good(&sim, &bearer)).await.0, 200);

    let (_, stats) = call("GET", "/stats", "").await;
    assert_eq!(
        stats,
        serde_json::json!({"total": 2, "delivered": 1, "connections": 1})
    );
    let (_, pushes) = call("GET", "/pushes", "").await;
    assert_eq!(pushes.as_array().unwrap().len(), 2);
    assert_eq!(pushes[0]["status"], 503);
    assert_eq!(pushes[1]["headers"]["apns-push-type"], "alert");
    assert_eq!(pushes[1]["payload"]["aps"]["alert"]["title"], "t");
    assert_eq!(call("DELETE", "/pushes", "").await.0, 200);
    assert!(sim.pushes().is_empty());
    assert_eq!(call("POST", "/goaway", "").await.0, 200);
    assert_eq!(call("GET", "/nothing", "").await.0, 404);
}

#[tokio::test]
async fn standalone_writes_its_files_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let task = tokio::spawn(sca_dispatch::sim::apns::run_standalone(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().to_path_buf(),
    ));
    let ca = dir.path().join("ca.pem");
    let key = dir.path().join("AuthKey_SIMKEY0001.p8");
    let started = std::time::Instant::now();
    while !(ca.exists() && jwt::load_key(&key.display().to_string()).is_ok()) {
        assert!(!task.is_finished(), "run_standalone stopped early");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "files not written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
}
