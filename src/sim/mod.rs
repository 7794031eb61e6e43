//! Simulators of APNs, FCM (with its OAuth2 token endpoint), Huawei Push Kit (with its
//! OAuth 2.0 token endpoint) and the SMS gateways. They speak the real protocols, record
//! what they receive and can be scripted to fail; tests, benchmarks and the demo share
//! them, and users can run them alone; [`fault`] makes a running one fail as a whole. Beside them, the benchmark's baselines: a bare HTTP
//! server ([`http_baseline`]) and a bare relay doing a challenge's I/O and nothing else
//! ([`relay`]).

pub mod apns;
pub mod fault;
pub mod fcm;
pub mod hms;
pub mod http_baseline;
pub mod relay;
pub mod sms;
