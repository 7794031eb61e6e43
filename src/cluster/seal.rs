//! The seal on instance-to-instance messages: HMAC-SHA256 with `cluster.secret` over
//! the timestamp and the body, carried in the AMQP headers `x-sca-ts` (Unix ms) and
//! `x-sca-mac` (lowercase hex). A message whose MAC does not verify (constant-time), that
//! carries none, or whose timestamp is more than [`MAX_AGE_MS`] away from now is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a message's timestamp may be from the receiver's clock.
pub const MAX_AGE_MS: i64 = 30_000;

/// Why a message was refused (the label of `sca_control_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    Unsigned,
    BadMac,
    Stale,
}

impl Rejected {
    pub fn label(self) -> &'static str {
        match self {
            Rejected::Unsigned => "unsigned",
            Rejected::BadMac => "bad_mac",
            Rejected::Stale => "stale",
        }
    }
}

/// The key; `Debug` never shows it.
#[derive(Clone)]
pub struct Seal {
    key: Vec<u8>,
}

impl std::fmt::Debug for Seal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seal(****)")
    }
}

impl Seal {
    pub fn new(secret: &str) -> Seal {
        Seal {
            key: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, ts_ms: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(b"sca-v1|control|");
        m.update(ts_ms.to_string().as_bytes());
        m.update(b"|");
        m.update(body);
        m
    }

    /// The hex MAC of `body` sent at `ts_ms`.
    pub fn sign(&self, ts_ms: i64, body: &[u8]) -> String {
        hex::encode(self.mac(ts_ms, body).finalize().into_bytes())
    }

    /// Checks a received message: `ts_ms` and `mac_hex` from its headers, if present.
    pub fn verify(
        &self,
        now_ms: i64,
        ts_ms: Option<i64>,
        mac_hex: Option<&str>,
        body: &[u8],
    ) -> Result<(), Rejected> {
        let (Some(ts), Some(mac)) = (ts_ms, mac_hex) else {
            return Err(Rejected::Unsigned);
        };
        let Ok(mac) = hex::decode(mac) else {
            return Err(Rejected::BadMac);
        };
        self.mac(ts, body)
            .verify_slice(&mac)
            .map_err(|_| Rejected::BadMac)?;
        if (now_ms - ts).abs() > MAX_AGE_MS {
            return Err(Rejected::Stale);
        }
        Ok(())
    }

    /// Checks only the MAC, at any age: for state kept in a queue (a hand-over), where
    /// the sealed body binds it to its challenge and a replay changes nothing.
    pub fn verify_mac(
        &self,
        ts_ms: Option<i64>,
        mac_hex: Option<&str>,
        body: &[u8],
    ) -> Result<(), Rejected> {
        let ts = ts_ms.ok_or(Rejected::Unsigned)?;
        self.verify(ts, Some(ts), mac_hex, body)
    }

    /// A key derived for another purpose (the one-time-code hash key in cluster mode,
    /// so that a code issued on one instance verifies on the next owner).
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(b"sca-v1|derive|");
        m.update(purpose.as_bytes());
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_message_verifies_and_any_change_is_refused() {
        let s = Seal::new("0123456789abcdef0123456789abcdef");
        let mac = s.sign(1_000, b"{\"t\":\"hello\"}");
        assert_eq!(
            s.verify(1_000, Some(1_000), Some(&mac), b"{\"t\":\"hello\"}"),
            Ok(())
        );
        assert_eq!(
            s.verify(1_000, Some(1_000), Some(&mac), b"{\"t\":\"hellO\"}"),
            Err(Rejected::BadMac)
        );
        assert_eq!(
            s.verify(1_000, Some(1_001), Some(&mac), b"{\"t\":\"hello\"}"),
            Err(Rejected::BadMac),
            "the timestamp is covered"
        );
        let other = Seal::new("another-secret-another-secret-xx");
        assert_eq!(
            other.verify(1_000, Some(1_000), Some(&mac), b"{\"t\":\"hello\"}"),
            Err(Rejected::BadMac)
        );
        assert_eq!(s.verify(1_000, None, None, b"x"), Err(Rejected::Unsigned));
        assert_eq!(
            s.verify(1_000, Some(1_000), Some("zz"), b"x"),
            Err(Rejected::BadMac)
        );
    }

    #[test]
    fn older_than_thirty_seconds_is_refused() {
        let s = Seal::new("0123456789abcdef0123456789abcdef");
        let mac = s.sign(0, b"b");
        assert_eq!(s.verify(MAX_AGE_MS, Some(0), Some(&mac), b"b"), Ok(()));
        assert_eq!(
            s.verify(MAX_AGE_MS + 1, Some(0), Some(&mac), b"b"),
            Err(Rejected::Stale)
        );
        assert_eq!(
            s.verify(-MAX_AGE_MS - 1, Some(0), Some(&mac), b"b"),
            Err(Rejected::Stale),
            "from the future too"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Seal::new("0123456789abcdef0123456789abcdef");
        assert!(!format!("{s:?}").contains("0123"));
    }
}
