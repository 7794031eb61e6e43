//! sca-dispatch: strong customer authentication dispatcher.
//!
//! Module map (see ARCHITECTURE.md):
//! - [`config`]: typed configuration, TOML + `SCA_*` environment overrides.
//! - [`challenge`]: the pure domain — model, validation, state machine, OTP, signatures.
//! - [`engine`]: the sans-io core (table, rules across challenges) and its async driver.
//! - [`wire`]: every JSON shape crossing the process boundary, typed.
//! - [`amqp`]: RabbitMQ topology, consumers, ack batching, confirming publisher.
//! - [`http`]: the HTTP API and the metrics endpoint.
//! - [`push`], [`sms`]: the provider transports behind small traits.
//! - [`limits`]: per-user challenge rate limit.
//! - [`texts`]: localized push and SMS texts.
//! - [`sim`], `demo`, `loadgen`, `chaos`: simulators, demo, load generator and the chaos
//!   runner (feature `tools`).
//! - `fuzzing`: the fuzz targets' entry points (feature `fuzzing`, part of `tools`).
//! - [`cluster`]: the pure parts of cluster mode — message seal, partition assignment, claims.
//! - [`retry`], [`tls`], [`telemetry`], [`clock`]: backoff timing; TLS set-up; metrics and
//!   logs; the wall clock.
// The daemon has no unsafe code; the tools' counting allocator (`engine::footprint`)
// is the one scoped exception.
#![cfg_attr(not(feature = "tools"), forbid(unsafe_code))]
#![cfg_attr(feature = "tools", deny(unsafe_code))]

pub mod amqp;
pub mod challenge;
#[cfg(feature = "tools")]
pub mod chaos;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
#[cfg(feature = "tools")]
pub mod demo;
pub mod engine;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod limits;
#[cfg(feature = "tools")]
pub mod loadgen;
pub mod push;
pub mod retry;
pub mod runtime;
#[cfg(feature = "tools")]
pub mod sim;
pub mod sms;
pub mod telemetry;
pub mod texts;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use daemon::{run, Daemon};
pub use engine::Providers;
