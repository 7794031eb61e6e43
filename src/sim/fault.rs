//! A switch that makes a running simulator fail as a whole, whatever the request: answer
//! "unavailable" (503) or not answer at all. The chaos runner (`sca-dispatch chaos`) and
//! tests flip it on a live simulator; it also counts the requests it turned away, so a
//! caller can check that the fault was met.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// What a simulator does with every request while the switch is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Normal answers.
    Off,
    /// 503 (the provider is down).
    Unavailable,
    /// No answer: the request is held until the client gives up.
    Stall,
}

/// The switch; shared by the simulator's handle and its request handlers.
#[derive(Debug, Default)]
pub struct FaultSwitch {
    mode: AtomicU8,
    unavailable: AtomicU64,
    stalled: AtomicU64,
}

impl FaultSwitch {
    /// Applies `fault` to every request from now on.
    pub fn set(&self, fault: Fault) {
        let v = match fault {
            Fault::Off => 0,
            Fault::Unavailable => 1,
            Fault::Stall => 2,
        };
        self.mode.store(v, Ordering::SeqCst);
    }

    pub fn get(&self) -> Fault {
        match self.mode.load(Ordering::SeqCst) {
            1 => Fault::Unavailable,
            2 => Fault::Stall,
            _ => Fault::Off,
        }
    }

    /// The fault for one request, counted when it is on.
    pub fn take(&self) -> Fault {
        let f = self.get();
        match f {
            Fault::Off => {}
            Fault::Unavailable => {
                self.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Stall => {
                self.stalled.fetch_add(1, Ordering::Relaxed);
            }
        }
        f
    }

    /// Requests answered 503 by the switch so far.
    pub fn unavailable_answers(&self) -> u64 {
        self.unavailable.load(Ordering::Relaxed)
    }

    /// Requests held without an answer by the switch so far.
    pub fn stalled_requests(&self) -> u64 {
        self.stalled.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_only_while_on() {
        let s = FaultSwitch::default();
        assert_eq!(s.take(), Fault::Off);
        s.set(Fault::Unavailable);
        assert_eq!(s.take(), Fault::Unavailable);
        s.set(Fault::Stall);
        assert_eq!(s.take(), Fault::Stall);
        assert_eq!(s.take(), Fault::Stall);
        s.set(Fault::Off);
        assert_eq!(s.take(), Fault::Off);
        assert_eq!((s.unavailable_answers(), s.stalled_requests()), (1, 2));
    }
}
