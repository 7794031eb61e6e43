//! The challenge engine, in two layers as quinn has `quinn-proto` under `quinn`:
//! [`core`] is sans-io — the table of challenges and every rule across them, calls that
//! take `now` and return an answer plus effects — and [`driver`] is the thin async layer
//! that owns the clock, spawning, metrics, timers and waiters and carries the effects out
//! through the provider traits, the [`sink::OutcomeSink`] and the [`peers::Peers`].
//!
//! Delivery guarantee: a challenge's AMQP delivery is acked only after its outcome is
//! confirmed by the broker. A crash before that leaves it unacked, RabbitMQ redelivers
//! it, and it is dispatched again.

pub mod core;
pub mod driver;
pub mod fatigue;
pub mod peers;
pub mod pending_index;
pub mod sink;
pub mod timers;

pub use self::core::DeliveryMeta;
pub use driver::{now_ms, Ack, AckToken, Engine};

use crate::push::PushProvider;
use crate::sms::SmsGateway;
use std::sync::Arc;

/// The JSON helpers the tooling (demo, load generator) uses.
pub mod json {
    pub use crate::wire::rfc3339_ms;
}

/// The transports the engine drives. `None` = not configured.
#[derive(Clone, Default)]
pub struct Providers {
    pub apns: Option<Arc<dyn PushProvider>>,
    pub fcm: Option<Arc<dyn PushProvider>>,
    pub hms: Option<Arc<dyn PushProvider>>,
    pub sms: Option<Arc<dyn SmsGateway>>,
}
