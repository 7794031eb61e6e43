//! Offline confirmation (CONTRACT §10): the device's 32-byte `offline_key` (zeroized when
//! dropped, never shown by `Debug`), the 8-digit operation id, the compact `qr` payload
//! the web page shows, and the code the app computes from them — RFC 4226 §5.3 dynamic
//! truncation of HMAC-SHA256(`offline_key`, `sca-v1|offline|{operation_id}|{tx_digest}`),
//! mod 10^8. Verification compares against every bound key in constant time. Pure: the
//! operation id's randomness comes in from the caller.

use super::model::{Kind, Transaction};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// Digits of an operation id and of an offline code.
pub const DIGITS: usize = 8;
const MODULUS: u32 = 100_000_000;

/// A device's offline key: 32 bytes, wiped from memory when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct OfflineKey(Box<[u8; 32]>);

impl std::fmt::Debug for OfflineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OfflineKey(..)")
    }
}

impl Drop for OfflineKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl OfflineKey {
    pub fn from_bytes(bytes: [u8; 32]) -> OfflineKey {
        OfflineKey(Box::new(bytes))
    }

    /// Parses base64 of exactly 32 bytes. The error never repeats the input.
    pub fn parse(b64: &str) -> Result<OfflineKey, &'static str> {
        let mut raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| "offline_key must be base64 of 32 bytes")?;
        let key = <[u8; 32]>::try_from(raw.as_slice())
            .map(OfflineKey::from_bytes)
            .map_err(|_| "offline_key must be base64 of 32 bytes");
        raw.zeroize();
        key
    }

    /// The key's bytes (to hand the key to an app at binding time).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 8-digit code for an operation, as the app computes it.
    pub fn code(&self, operation_id: &str, tx_digest: &str) -> u32 {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0[..]).expect("any key length");
        mac.update(signed_string(operation_id, tx_digest).as_bytes());
        let h: [u8; 32] = mac.finalize().into_bytes().into();
        truncate(&h)
    }
}

/// The string the offline code is an HMAC of.
pub fn signed_string(operation_id: &str, tx_digest: &str) -> String {
    format!("sca-v1|offline|{operation_id}|{tx_digest}")
}

/// RFC 4226 §5.3 dynamic truncation of a 32-byte MAC, mod 10^8.
fn truncate(h: &[u8; 32]) -> u32 {
    let off = (h[31] & 0x0f) as usize;
    let bin = (u32::from(h[off] & 0x7f) << 24)
        | (u32::from(h[off + 1]) << 16)
        | (u32::from(h[off + 2]) << 8)
        | u32::from(h[off + 3]);
    bin % MODULUS
}

/// A code or operation id as text: 8 digits, zero-padded.
pub fn format_code(n: u32) -> String {
    format!("{:0width$}", n % MODULUS, width = DIGITS)
}

/// True for 8 ASCII digits.
pub fn well_formed(s: &str) -> bool {
    s.len() == DIGITS && s.bytes().all(|b| b.is_ascii_digit())
}

/// The parsed value of an 8-digit code.
pub fn parse_code(s: &str) -> Option<u32> {
    well_formed(s).then(|| s.parse().ok()).flatten()
}

/// Checks `code` against every key, in constant time and without stopping at a match:
/// the index of the (first) matching key, if any.
pub fn verify<'a>(
    keys: impl IntoIterator<Item = Option<&'a OfflineKey>>,
    operation_id: &str,
    tx_digest: &str,
    code: u32,
) -> Option<usize> {
    let given = code.to_be_bytes();
    let mut found: Option<usize> = None;
    for (i, key) in keys.into_iter().enumerate() {
        let Some(key) = key else { continue };
        let expected = key.code(operation_id, tx_digest).to_be_bytes();
        let hit: bool = expected.ct_eq(&given).into();
        if hit && found.is_none() {
            found = Some(i);
        }
    }
    found
}

/// The transaction part of the QR payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrTransaction {
    pub amount: String,
    pub currency: String,
    pub payee: String,
}

/// The `qr` payload: `{"v":1,"op","kind","exp","tx"?}`, serialized compactly in this
/// field order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QrPayload {
    pub v: u8,
    pub op: String,
    pub kind: Kind,
    /// Expiry, Unix seconds.
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<QrTransaction>,
}

impl QrPayload {
    pub fn new(
        operation_id: &str,
        kind: Kind,
        expires_at_ms: i64,
        tx: Option<&Transaction>,
    ) -> Self {
        QrPayload {
            v: 1,
            op: operation_id.to_string(),
            kind,
            exp: expires_at_ms.div_euclid(1000),
            tx: tx.map(|t| QrTransaction {
                amount: t.amount.clone(),
                currency: t.currency.clone(),
                payee: t.payee.clone(),
            }),
        }
    }

    /// The compact JSON string.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The transaction digest of CONTRACT §5 (empty without a transaction).
    pub fn tx_digest(&self) -> String {
        self.tx
            .as_ref()
            .map(|t| {
                Transaction {
                    amount: t.amount.clone(),
                    currency: t.currency.clone(),
                    payee: t.payee.clone(),
                }
                .digest_hex()
            })
            .unwrap_or_default()
    }
}

/// The reference generator (`sca-dispatch offline-code`): the code the app shows for a
/// scanned QR payload (or a typed operation id, with no transaction).
pub fn code_for_qr(key: &OfflineKey, qr: &str) -> Result<String, String> {
    let qr = qr.trim();
    let (op, digest) = if well_formed(qr) {
        (qr.to_string(), String::new())
    } else {
        let p: QrPayload =
            serde_json::from_str(qr).map_err(|e| format!("not a QR payload: {e}"))?;
        if p.v != 1 {
            return Err(format!("unsupported QR payload version {}", p.v));
        }
        if !well_formed(&p.op) {
            return Err("op must be 8 digits".into());
        }
        let d = p.tx_digest();
        (p.op, d)
    };
    Ok(format_code(key.code(&op, &digest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn truncation_follows_rfc_4226() {
        // RFC 4226 appendix D's worked example for HMAC-SHA-1 output: offset 10 gives
        // 0x50ef7f19 = 1357872921; the same bytes in a 32-byte MAC truncate alike.
        let mut h = [0u8; 32];
        let sha1 = hex::decode("1f8698690e02ca16618550ef7f19da8e945b555a").unwrap();
        h[..20].copy_from_slice(&sha1);
        h[31] = 0x5a; // low nibble 0xa, as the SHA-1 example's last byte
        assert_eq!(truncate(&h), 1_357_872_921 % MODULUS);
        assert_eq!(format_code(truncate(&h)), "57872921");
    }

    #[test]
    fn a_known_vector() {
        // Key = 32 bytes of 0x01, operation 12345678, no transaction.
        let key = OfflineKey::from_bytes([1; 32]);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[1; 32]).unwrap();
        mac.update(b"sca-v1|offline|12345678|");
        let h: [u8; 32] = mac.finalize().into_bytes().into();
        let off = (h[31] & 0x0f) as usize;
        let n = u32::from_be_bytes([h[off] & 0x7f, h[off + 1], h[off + 2], h[off + 3]]);
        assert_eq!(key.code("12345678", ""), n % 100_000_000);
    }

    #[test]
    fn keys_parse_only_at_32_bytes_and_hide_in_debug() {
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let k = OfflineKey::parse(&b64).unwrap();
        assert_eq!(format!("{k:?}"), "OfflineKey(..)");
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
        assert!(OfflineKey::parse(&short).is_err());
        let e = OfflineKey::parse("not base64!").unwrap_err();
        assert!(!e.contains("base64!"));
    }

    #[test]
    fn the_qr_is_compact_json_in_contract_order() {
        let tx = Transaction {
            amount: "125.40".into(),
            currency: "EUR".into(),
            payee: "Mario Rossi".into(),
        };
        let q = QrPayload::new("01234567", Kind::Payment, 1_795_462_920_000, Some(&tx));
        assert_eq!(
            q.encode(),
            r#"{"v":1,"op":"01234567","kind":"payment","exp":1795462920,"tx":{"amount":"125.40","currency":"EUR","payee":"Mario Rossi"}}"#
        );
        let q = QrPayload::new("01234567", Kind::Login, 1_795_462_920_000, None);
        assert_eq!(
            q.encode(),
            r#"{"v":1,"op":"01234567","kind":"login","exp":1795462920}"#
        );
    }

    #[test]
    fn the_generator_agrees_with_the_verifier() {
        let key = OfflineKey::from_bytes([9; 32]);
        let tx = Transaction {
            amount: "9.99".into(),
            currency: "EUR".into(),
            payee: "Shop".into(),
        };
        let qr = QrPayload::new("00000042", Kind::Payment, 0, Some(&tx)).encode();
        let code = code_for_qr(&key, &qr).unwrap();
        assert_eq!(code.len(), 8);
        let n = parse_code(&code).unwrap();
        let other = OfflineKey::from_bytes([8; 32]);
        let keys = [None, Some(&other), Some(&key)];
        assert_eq!(verify(keys, "00000042", &tx.digest_hex(), n), Some(2));
        assert_eq!(verify(keys, "00000043", &tx.digest_hex(), n), None);
        assert_eq!(verify(keys, "00000042", "", n), None);
        // A typed operation id alone is a challenge without a transaction.
        let typed = code_for_qr(&key, "00000042").unwrap();
        assert_eq!(typed, format_code(key.code("00000042", "")));
        assert!(code_for_qr(&key, "{}").is_err());
    }

    proptest! {
        #[test]
        fn codes_are_eight_digits_and_bound_to_the_operation(seed in any::<[u8; 32]>(),
                                                              op in 0u32..100_000_000) {
            let key = OfflineKey::from_bytes(seed);
            let op = format_code(op);
            let c = key.code(&op, "");
            prop_assert!(c < MODULUS);
            prop_assert!(well_formed(&format_code(c)));
            prop_assert_eq!(verify([Some(&key)], &op, "", c), Some(0));
        }
    }
}
