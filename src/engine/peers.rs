//! Reaching the instance that holds a challenge. Challenge state lives in the memory of
//! the one instance that consumed it; an operation arriving at another instance (through
//! a load balancer, or from the shared responses queue) is forwarded to its owner over
//! RabbitMQ. The engine sees this as a small trait; `amqp::control` implements it.

use super::json::Answer;
use crate::push::BoxFuture;
use serde_json::Value;
use std::time::Duration;

/// A request for the owner of a challenge: the operation as JSON (the body format of
/// `sca.responses`, or `{"op":"view","wait_ms":…}`).
#[derive(Debug, Clone)]
pub struct PeerRequest {
    pub challenge_id: String,
    pub op: Value,
    /// How long the owner may hold the answer (long-poll).
    pub wait: Duration,
}

pub trait Peers: Send + Sync + 'static {
    /// Asks the other instances; `None` when none holds the challenge (or none answered).
    fn ask(&self, req: PeerRequest) -> BoxFuture<'_, Option<Answer>>;
    /// Tells every other instance something they should count too (fire and forget).
    fn tell(&self, note: Value) -> BoxFuture<'_, ()>;
}
