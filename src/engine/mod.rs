//! The challenge engine, in two layers as quinn has `quinn-proto` under `quinn`:
//! [`core`] is sans-io — the table of challenges and every rule across them, calls that
//! take `now` and return an answer plus effects — and [`driver`] is the thin async layer
//! that owns the clock, spawning, metrics, timers and waiters and carries the effects out
//! through the provider traits, the [`sink::OutcomeSink`] and the [`peers::Peers`].
//!
//! Delivery guarantee: a challenge's AMQP delivery is acked only after its outcome is
//! confirmed by the broker. A crash before that leaves it unacked, RabbitMQ redelivers
//! it, and it is dispatched again.

pub mod core;
pub mod driver;
pub mod fatigue;
#[cfg(feature = "tools")]
#[allow(unsafe_code)]
pub mod footprint;
pub mod peers;
pub mod pending_index;
pub mod sink;
pub mod timers;

pub use self::core::DeliveryMeta;
pub use driver::{now_ms, Ack, AckToken, Engine};

use self::core::AppReach;
use crate::challenge::model::{AppName, Platform};
use crate::push::PushProvider;
use crate::sms::SmsGateway;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The JSON helpers the tooling (demo, load generator) uses.
pub mod json {
    pub use crate::wire::rfc3339_ms;
}

/// The transports the engine drives. `None` = not configured.
#[derive(Clone, Default)]
pub struct Providers {
    /// The default app's push transports (`[apns]`, `[fcm]`, `[hms]`).
    pub apns: Option<Arc<dyn PushProvider>>,
    pub fcm: Option<Arc<dyn PushProvider>>,
    pub hms: Option<Arc<dyn PushProvider>>,
    pub sms: Option<Arc<dyn SmsGateway>>,
    /// The named apps' push transports (`[apps.<name>]`, challenge field `app`). Apps
    /// sharing a credential share one transport (one APNs pool per key, one FCM token
    /// cache per service account, one Push Kit token cache per app id).
    pub apps: BTreeMap<AppName, AppProviders>,
}

/// One named app's push transports. `None` = not configured for this app.
#[derive(Clone, Default)]
pub struct AppProviders {
    pub apns: Option<Arc<dyn PushProvider>>,
    pub fcm: Option<Arc<dyn PushProvider>>,
    pub hms: Option<Arc<dyn PushProvider>>,
}

impl AppProviders {
    pub fn get(&self, p: Platform) -> Option<&Arc<dyn PushProvider>> {
        match p {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
            Platform::Hms => self.hms.as_ref(),
        }
    }

    pub fn reach(&self) -> AppReach {
        AppReach {
            apns: self.apns.is_some(),
            fcm: self.fcm.is_some(),
            hms: self.hms.is_some(),
        }
    }
}

impl Providers {
    /// The transport for `app`'s devices on `p`, if configured.
    pub fn push(&self, app: &AppName, p: Platform) -> Option<Arc<dyn PushProvider>> {
        if app.is_default() {
            return match p {
                Platform::Apns => self.apns.clone(),
                Platform::Fcm => self.fcm.clone(),
                Platform::Hms => self.hms.clone(),
            };
        }
        self.apps.get(app)?.get(p).cloned()
    }

    /// The default app's push transports, as a named app's are held.
    pub fn default_app(&self) -> AppProviders {
        AppProviders {
            apns: self.apns.clone(),
            fcm: self.fcm.clone(),
            hms: self.hms.clone(),
        }
    }

    /// Every app, the default first, with its transports.
    pub fn all_apps(&self) -> Vec<(AppName, AppProviders)> {
        std::iter::once((AppName::default(), self.default_app()))
            .chain(self.apps.iter().map(|(n, p)| (n.clone(), p.clone())))
            .collect()
    }
}
