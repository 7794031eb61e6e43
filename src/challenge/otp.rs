//! One-time codes (CONTRACT §7): 6 digits from the OS CSPRNG, kept only as a keyed hash
//! over code, challenge id and transaction digest, compared in constant time.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How long a code stays valid at most.
pub const OTP_VALIDITY_MS: i64 = 300_000;
/// Wrong codes after which a challenge ends `otp_locked`.
pub const MAX_OTP_ATTEMPTS: u8 = 5;

/// The keyed hash of one code; the plain code is never stored.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct OtpHash(pub [u8; 32]);

impl std::fmt::Debug for OtpHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpHash(..)")
    }
}

impl OtpHash {
    /// Constant-time equality.
    pub fn matches(&self, other: &OtpHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

/// Hashes codes with a per-deployment key.
#[derive(Clone)]
pub struct OtpHasher {
    key: [u8; 32],
}

impl std::fmt::Debug for OtpHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtpHasher(..)")
    }
}

impl OtpHasher {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A key from configuration text (hashed to 32 bytes), or a random one when empty.
    pub fn from_config(key: &str) -> Self {
        if key.is_empty() {
            Self::new(rand::rngs::OsRng.gen())
        } else {
            use sha2::Digest;
            Self::new(Sha256::digest(key.as_bytes()).into())
        }
    }

    /// HMAC-SHA256(key, code | challenge_id | tx_digest): a code issued for one
    /// transaction can never match another.
    pub fn hash(&self, code: &str, challenge_id: &str, tx_digest: &str) -> OtpHash {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        mac.update(code.as_bytes());
        mac.update(b"|");
        mac.update(challenge_id.as_bytes());
        mac.update(b"|");
        mac.update(tx_digest.as_bytes());
        OtpHash(mac.finalize().into_bytes().into())
    }
}

/// A fresh 6-digit code from the OS CSPRNG, uniformly distributed.
pub fn generate_code() -> String {
    let n: u32 = rand::rngs::OsRng.gen_range(0..1_000_000);
    format!("{n:06}")
}

/// True when `s` looks like a code at all (6 ASCII digits).
pub fn well_formed(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_are_six_digits() {
        for _ in 0..1000 {
            assert!(well_formed(&generate_code()));
        }
    }

    proptest! {
        #[test]
        fn hash_binds_code_challenge_and_transaction(code in "[0-9]{6}", other in "[0-9]{6}",
                                                     id in "[a-z]{1,8}", tx in "[a-f0-9]{0,8}") {
            let h = OtpHasher::new([3; 32]);
            let a = h.hash(&code, &id, &tx);
            prop_assert!(a.matches(&h.hash(&code, &id, &tx)));
            prop_assert_eq!(a.matches(&h.hash(&other, &id, &tx)), code == other);
            let (id2, tx2) = (format!("{id}x"), format!("{tx}0"));
            prop_assert!(!a.matches(&h.hash(&code, &id2, &tx)));
            prop_assert!(!a.matches(&h.hash(&code, &id, &tx2)));
            prop_assert!(!a.matches(&OtpHasher::new([4; 32]).hash(&code, &id, &tx)));
        }
    }
}
