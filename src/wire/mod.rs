//! Every JSON shape that crosses the process boundary, typed: the outcome and the other
//! events (`messages`), the `GET /v1/challenges/{id}` view (`messages`), operation
//! requests from HTTP bodies and `sca.responses` and their one mapping to an answer
//! (`ops`), the messages between instances on the control exchange (`control`), and the
//! hand-written JSON writer the per-challenge bodies are built with (`json`).
//!
//! Input is validated while it is parsed: a value of these types is known good, so the
//! engine never re-checks it and never falls back to a default for a bad field.

pub mod control;
pub mod json;
pub mod messages;
pub mod ops;

pub use messages::rfc3339_ms;
pub use ops::{Answer, Authority, ChallengeId, Decision, OpOutcome, Operation, OtpCode};
