//! The command line: `check-config` accepts the example, and a bad value exits 2 with a
//! message naming the key (from the file or from the environment).

use std::process::Command;

fn check(config: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sca-dispatch"));
    cmd.args(["check-config", "--config"]).arg(config);
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
    let (code, text) = check(&example, &[]);
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
