//! SMS one-time-code delivery: the [`SmsGateway`] trait, delivery with retries while the
//! code is valid, the gateways (`twilio`, `webhook`) and the per-user abuse limits.
//! Phone numbers are masked everywhere they are logged or published; codes never are.

pub mod abuse;
pub mod gateway;

use futures_util::future::BoxFuture;
use std::time::Duration;

/// One text to one number. `reference` is the challenge id.
#[derive(Clone)]
pub struct SmsMessage {
    pub to: String,
    pub text: String,
    pub reference: String,
}

impl std::fmt::Debug for SmsMessage {
    // The text carries the code: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmsMessage")
            .field("to", &mask_phone(&self.to))
            .field("reference", &self.reference)
            .finish_non_exhaustive()
    }
}

/// Why a gateway did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmsError {
    #[error("transient gateway failure: {reason}")]
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    #[error("gateway refused the message: {0}")]
    Permanent(String),
}

/// An SMS gateway.
pub trait SmsGateway: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn send<'a>(&'a self, msg: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>>;
}

/// Sends with retries (backoff, or the gateway's hint) until `valid_for` runs out.
pub async fn deliver(
    gateway: &dyn SmsGateway,
    msg: &SmsMessage,
    valid_for: Duration,
) -> Result<(), SmsError> {
    let deadline = tokio::time::Instant::now() + valid_for;
    let mut attempt = 0;
    loop {
        match gateway.send(msg).await {
            Ok(()) => return Ok(()),
            Err(SmsError::Permanent(r)) => return Err(SmsError::Permanent(r)),
            Err(SmsError::Retryable {
                reason,
                retry_after,
            }) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                match crate::retry::next_delay(attempt, retry_after, remaining) {
                    Some(d) => {
                        tracing::debug!(to = %mask_phone(&msg.to), %reason, "SMS retry in {d:?}");
                        tokio::time::sleep(d).await;
                        attempt += 1;
                    }
                    None => return Err(SmsError::Permanent(format!("gave up: {reason}"))),
                }
            }
        }
    }
}

/// `+393401234567` → `+39340****567`: country and operator prefix, last three digits.
/// Whatever the length, at least four characters stay hidden: a shorter number shows
/// less of its prefix (`+3912345` → `+****345`).
pub fn mask_phone(phone: &str) -> String {
    let n = phone.chars().count();
    if n < 8 {
        return "****".into();
    }
    let head: String = phone.chars().take(6.min(n - 7)).collect();
    let tail: String = phone.chars().skip(n - 3).collect();
    format!("{head}****{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn phones_are_masked() {
        assert_eq!(mask_phone("+393401234567"), "+39340****567");
        assert_eq!(mask_phone("+1234"), "****");
    }

    /// Found by the `answers` fuzz target: 11 characters were shown as 9 of them.
    #[test]
    fn short_numbers_keep_four_characters_hidden() {
        assert_eq!(mask_phone("+3912345"), "+****345");
        assert_eq!(mask_phone("+35541234567"), "+3554****567");
        let odd = ", \0\u{1}\u{2}\0{2\"";
        for p in ["+3912345", "+391234567", "393401234567", odd] {
            let n = p.chars().count();
            let shown = mask_phone(p).chars().filter(|&c| c != '*').count();
            assert!(shown + 4 <= n, "{p:?}: {}", mask_phone(p));
        }
    }

    struct Flaky(AtomicU32, u32);
    impl SmsGateway for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        fn send<'a>(&'a self, _: &'a SmsMessage) -> BoxFuture<'a, Result<(), SmsError>> {
            Box::pin(async move {
                if self.0.fetch_add(1, Ordering::SeqCst) < self.1 {
                    Err(SmsError::Retryable {
                        reason: "503".into(),
                        retry_after: None,
                    })
                } else {
                    Ok(())
                }
            })
        }
    }

    fn msg() -> SmsMessage {
        SmsMessage {
            to: "+393401234567".into(),
            text: "Code 1".into(),
            reference: "c".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_while_valid_then_gives_up() {
        let g = Flaky(AtomicU32::new(0), 2);
        assert!(deliver(&g, &msg(), Duration::from_secs(60)).await.is_ok());
        assert_eq!(g.0.load(Ordering::SeqCst), 3);
        let g = Flaky(AtomicU32::new(0), u32::MAX);
        let e = deliver(&g, &msg(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(e, SmsError::Permanent(_)));
    }

    #[test]
    fn debug_never_shows_the_text() {
        let s = format!("{:?}", msg());
        assert!(!s.contains("Code 1") && !s.contains("1234567"), "{s}");
    }
}
