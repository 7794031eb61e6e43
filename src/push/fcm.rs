//! FCM HTTP v1 transport (OAuth2 service account). Being written; see the FCM issue.

use crate::challenge::machine::PushResult;
use crate::challenge::model::Platform;
use crate::config::FcmConfig;
use crate::push::{BoxFuture, PushMessage, PushProvider};

/// Errors setting up the APNs provider.
#[derive(Debug, thiserror::Error)]
pub enum FcmError {
    #[error("fcm: {0}")]
    Setup(String),
}

pub struct FcmProvider;

impl FcmProvider {
    pub fn new(_cfg: &FcmConfig) -> Result<FcmProvider, FcmError> {
        Err(FcmError::Setup("the FCM transport is not built yet".into()))
    }
}

impl PushProvider for FcmProvider {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }
    fn send(&self, _msg: PushMessage) -> BoxFuture<'_, PushResult> {
        Box::pin(async { PushResult::Failed })
    }
}
