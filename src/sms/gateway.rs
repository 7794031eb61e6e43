//! SMS gateways (`twilio`, `webhook`). Being written; see the SMS issue.

use crate::config::SmsConfig;
use crate::sms::SmsGateway;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("sms: {0}")]
    Setup(String),
}

/// Builds the configured gateway, or `None` when `sms.gateway` is empty.
pub fn from_config(cfg: &SmsConfig) -> Result<Option<Arc<dyn SmsGateway>>, GatewayError> {
    if cfg.gateway.is_empty() {
        return Ok(None);
    }
    Err(GatewayError::Setup("SMS gateways are not built yet".into()))
}
