//! APNs transport (HTTP/2 over TLS, token auth). Being written; see the APNs issue.

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::config::ApnsConfig;
use crate::push::{BoxFuture, PushMessage, PushProvider};

/// Errors setting up the APNs provider.
#[derive(Debug, thiserror::Error)]
pub enum ApnsError {
    #[error("apns: {0}")]
    Setup(String),
}

pub struct ApnsProvider;

impl ApnsProvider {
    pub fn new(_cfg: &ApnsConfig) -> Result<ApnsProvider, ApnsError> {
        Err(ApnsError::Setup(
            "the APNs transport is not built yet".into(),
        ))
    }
}

impl PushProvider for ApnsProvider {
    fn platform(&self) -> Platform {
        Platform::Apns
    }
    fn send(&self, _msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(async { PushResult::Failed })
    }
}
