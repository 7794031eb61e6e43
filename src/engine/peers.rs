//! Reaching the instance that holds a challenge. Challenge state lives in the memory of
//! the one instance that consumed it; an operation arriving at another instance (through
//! a load balancer, or from the shared responses queue) is forwarded to its owner over
//! RabbitMQ. The engine sees this as a small trait; `amqp::control` implements it.

use crate::wire::control::{PeerAnswer, PeerNote, PeerRequest};
use futures_util::future::BoxFuture;

pub trait Peers: Send + Sync + 'static {
    /// Asks the other instances; `None` when none holds the challenge (or none answered).
    fn ask(&self, req: PeerRequest) -> BoxFuture<'_, Option<PeerAnswer>>;
    /// Tells every other instance something they should count too (fire and forget).
    fn tell(&self, note: PeerNote) -> BoxFuture<'_, ()>;
}
