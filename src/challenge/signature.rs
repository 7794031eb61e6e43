//! Device signatures (CONTRACT §5, §10): ECDSA P-256/SHA-256 over
//! `sca-v1|{challenge_id}|{decision}|{tx_digest}` (with `|fraud` for a fraud report) or
//! `sca-v1|pending|{device_id}|{unix_seconds}`, DER-encoded and base64'd.

use base64::Engine as _;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;

/// Parses a base64 SubjectPublicKeyInfo DER holding a P-256 key.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "not valid base64".to_string())?;
    VerifyingKey::from_public_key_der(&der).map_err(|_| "not a P-256 SPKI DER key".to_string())
}

/// The exact string a device signs.
pub fn signed_message(challenge_id: &str, decision: &str, tx_digest: &str) -> String {
    format!("sca-v1|{challenge_id}|{decision}|{tx_digest}")
}

/// The exact string a device signs to deny and report fraud (CONTRACT §10).
pub fn fraud_message(challenge_id: &str, tx_digest: &str) -> String {
    format!("sca-v1|{challenge_id}|deny|{tx_digest}|fraud")
}

/// The exact string a device signs to list its pending challenges (CONTRACT §10).
pub fn pending_message(device_id: &str, unix_seconds: i64) -> String {
    format!("sca-v1|pending|{device_id}|{unix_seconds}")
}

/// Verifies a base64 DER signature; any malformed input is simply `false`.
pub fn verify(key: &VerifyingKey, message: &str, signature_b64: &str) -> bool {
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return false;
    };
    let Ok(sig) = Signature::from_der(&der) else {
        return false;
    };
    key.verify(message.as_bytes(), &sig).is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::SigningKey;
    use p256::pkcs8::EncodePublicKey;

    /// A deterministic device key for tests.
    pub fn device_key(seed: u8) -> (SigningKey, String) {
        let sk = SigningKey::from_slice(&[seed.max(1); 32]).unwrap();
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(spki.as_bytes());
        (sk, b64)
    }

    pub fn sign(sk: &SigningKey, msg: &str) -> String {
        let sig: Signature = sk.sign(msg.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }

    #[test]
    fn good_signature_verifies_and_forged_does_not() {
        let (sk, pk) = device_key(7);
        let key = parse_public_key(&pk).unwrap();
        let msg = signed_message("c1", "approve", "");
        assert!(verify(&key, &msg, &sign(&sk, &msg)));
        let other = signed_message("c1", "deny", "");
        assert!(!verify(&key, &other, &sign(&sk, &msg)));
        let (sk2, _) = device_key(9);
        assert!(!verify(&key, &msg, &sign(&sk2, &msg)));
        assert!(!verify(&key, &msg, "!!"));
        assert!(parse_public_key("AAAA").is_err());
    }
}
