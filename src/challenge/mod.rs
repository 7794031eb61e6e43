//! The domain, free of I/O: the challenge model and its validation, the per-challenge
//! state machine, one-time-code hashing and the device-signature check. Nothing in here
//! reads the clock or touches the network.

pub mod context;
pub mod machine;
pub mod model;
pub mod offline;
pub mod otp;
pub mod raw;
pub mod signature;
