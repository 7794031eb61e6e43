//! sca-dispatch: strong customer authentication dispatcher.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`config`]: typed configuration, TOML + `SCA_*` environment overrides.
//! - [`challenge`]: the pure domain — model, validation, state machine, OTP, signatures.
//! - [`texts`]: localized push and SMS texts.
//! - [`push`], [`sms`]: the provider transports behind small traits.
//! - [`sim`]: APNs, FCM and SMS simulators.
//! - [`retry`], [`telemetry`]: backoff timing; metrics and logs.
#![forbid(unsafe_code)]

pub mod challenge;
pub mod config;
pub mod push;
pub mod retry;
pub mod sim;
pub mod sms;
pub mod telemetry;
pub mod texts;
pub mod tls;
