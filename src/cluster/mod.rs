//! The pure parts of cluster mode (CONTRACT §10): the HMAC seal on every message between
//! instances ([`seal`]), which instance should own which partition ([`assign`]), and the
//! claims this instance holds with their fencing epochs ([`ownership`]). No I/O here:
//! `amqp::cluster` claims partitions on the broker and `engine` fences on these values.

pub mod assign;
pub mod ownership;
pub mod seal;

pub use ownership::{Ownership, Part};
pub use seal::{Rejected, Seal};

/// The names cluster mode derives from `amqp.challenges_queue` (`sca.challenges` by
/// default): the consistent-hash exchange and the partition queues.
#[derive(Debug, Clone)]
pub struct Names {
    pub exchange: String,
    pub partitions: Vec<String>,
}

impl Names {
    pub fn new(challenges_queue: &str, partitions: u32) -> Names {
        Names {
            exchange: format!("{challenges_queue}.by-user"),
            partitions: (0..partitions)
                .map(|i| format!("{challenges_queue}.p{i}"))
                .collect(),
        }
    }

    /// The classic exclusive queue whose holder owns partition `i`.
    pub fn lock(&self, i: usize) -> String {
        format!("{}.owner", self.partitions[i])
    }
}
