//! What the engine needs from the broker side, as a trait: publish outcomes and events
//! with confirms, and dead-letter refused messages. `amqp::publisher` implements it.

use futures_util::future::BoxFuture;

/// Where a challenge asked its outcome to be sent as well (AMQP `reply_to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: String,
    pub correlation_id: Option<String>,
}

/// Outbound messages. Every future resolves once the broker confirmed the message, or
/// with `false` when the daemon is being stopped before it could be.
pub trait OutcomeSink: Send + Sync + 'static {
    /// Publish to the outcomes exchange (and `reply`, if any).
    fn publish_outcome(
        &self,
        routing_key: String,
        body: Vec<u8>,
        reply: Option<ReplyTo>,
    ) -> BoxFuture<'_, bool>;
    /// Publish to the events exchange.
    fn publish_event(&self, routing_key: &'static str, body: Vec<u8>) -> BoxFuture<'_, bool>;
    /// Put a refused message on the dead-letter exchange with header `x-sca-reason`.
    fn dead_letter(
        &self,
        source_queue: std::sync::Arc<str>,
        body: Vec<u8>,
        reason: String,
    ) -> BoxFuture<'_, bool>;
    /// Answer an operation received on the responses queue.
    fn reply(&self, to: ReplyTo, body: Vec<u8>) -> BoxFuture<'_, bool>;
}
