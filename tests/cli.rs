//! The command line: `check-config` accepts the example, and a bad value exits 2 with a
//! message naming the key (from the file or from the environment); `run` refuses to start
//! without API tokens unless told to run unauthenticated, which `/readyz` then reports.

mod common;

use std::process::Command;

fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    cli("check-config", config, env)
}

fn cli(sub: &str, config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"));
    cmd.args([sub, "--config"]).arg(config);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("binary runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_example_config_is_valid() {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sca-dispatch.example.toml");
    let (code, text) = check(&example, &[("SCA_HTTP_API_TOKENS", "a-token")]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("configuration is valid"));
}

#[test]
fn bad_values_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[amqp]\nprefetch = 0\n").unwrap();
    let (code, text) = check(&bad, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("amqp.prefetch"), "{text}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "").unwrap();
    let (code, text) = check(&good, &[("SCA_HTTP_ADDR", "not-an-address")]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("http.addr"), "{text}");
    let (code, text) = check(
        &good,
        &[
            ("SCA_SMS_GATEWAY", "twilio"),
            ("SCA_SMS_ENDPOINT", "https://api.twilio.com"),
        ],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("sms.account_sid"), "{text}");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[apns]\nkey_idd = \"X\"\n").unwrap();
    let (code, text) = check(&typo, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("key_idd"), "{text}");

    let (code, text) = check(&dir.path().join("missing.toml"), &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("missing.toml"), "{text}");
}

#[test]
fn no_api_tokens_exits_2_unless_unauthenticated_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    for sub in ["check-config", "run"] {
        let (code, text) = cli(sub, &empty, &[]);
        assert_eq!(code, 2, "{sub}: {text}");
        assert!(text.contains("http.api_tokens"), "{sub}: {text}");
    }
    let (code, text) = check(&empty, &[("SCA_HTTP_ALLOW_UNAUTHENTICATED", "true")]);
    assert_eq!(code, 0, "{text}");
}

#[test]
fn env_without_a_section_is_ignored_and_an_unknown_key_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[http]\napi_tokens = \"t\"\n").unwrap();
    let (code, text) = check(
        &good,
        &[
            ("SCA_DISPATCH_SERVICE_HOST", "10.0.0.1"),
            ("SCA_DISPATCH_PORT", "tcp://10.0.0.1:8080"),
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning") && text.contains("SCA_DISPATCH_PORT"),
        "{text}"
    );
    let (code, text) = check(&good, &[("SCA_HTTP_API_TOKEN", "t")]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("http.api_token"), "{text}");
}

#[test]
fn secrets_in_a_broken_file_are_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[amqp]\nurl = \"amqp://u:hunter2@h/%2f\n").unwrap();
    let (code, text) = check(&bad, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("amqp.url") && text.contains("line 2"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_says_how_the_api_authenticates() {
    let h = common::Harness::start().await;
    let (_, body) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(body["auth"], "bearer_token", "{body}");
    h.cleanup().await;
    let h = common::Harness::start_with(|c| {
        c.http.api_tokens = String::new();
        c.http.allow_unauthenticated = true;
    })
    .await;
    let (_, body) = h.http("GET", "/readyz", None, None).await;
    assert_eq!(body["auth"], "unauthenticated", "{body}");
    let (st, _) = h.http("GET", "/v1/challenges/nobody", None, None).await;
    assert_eq!(st, 404, "no token needed");
    h.cleanup().await;
}
