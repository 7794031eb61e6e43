//! Reaching the instance that holds a challenge. Challenge state lives in the memory of
//! the one instance that consumed it; an operation arriving at another instance (through
//! a load balancer, or from the shared responses queue) is forwarded to its owner over
//! RabbitMQ. The engine sees this as a small trait; `amqp::control` implements it.

use crate::wire::control::{PeerAnswer, PeerNote, PeerRequest};
use crate::wire::ops::UserHint;
use futures_util::future::BoxFuture;

/// What asking the other instances gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The owner answered.
    Answered(PeerAnswer),
    /// No instance holds the challenge (or no other instance is known).
    NotHeld,
    /// Some known instance did not answer in time: the owner may be unreachable.
    Silent,
}

pub trait Peers: Send + Sync + 'static {
    /// Asks the other instances about a challenge this one does not hold.
    fn ask(&self, req: PeerRequest) -> BoxFuture<'_, Asked>;
    /// Tells every other instance something they should count too (fire and forget).
    fn tell(&self, note: PeerNote) -> BoxFuture<'_, ()>;
    /// Cluster mode: asks the owner of `user`'s partition only, in one hop. Without
    /// cluster mode, the same as [`Peers::ask`].
    fn ask_owner<'a>(&'a self, req: PeerRequest, user: &'a UserHint) -> BoxFuture<'a, Asked> {
        let _ = user;
        self.ask(req)
    }
    /// Cluster mode: true while every partition has a live owner.
    fn all_owned(&self) -> bool {
        true
    }
}
