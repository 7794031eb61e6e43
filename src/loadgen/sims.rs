//! The APNs, FCM and SMS simulators a daemon under load points at: started together,
//! their files written to one directory, the configuration lines printed as `simulate`
//! prints them, and their feeds handed to the device players.

use super::player::Feeds;
use crate::sim::apns::{ApnsSim, ApnsSimOptions};
use crate::sim::fcm::{FcmSim, FcmSimOptions};
use crate::sim::sms::{Shape, SmsSim, SmsSimOptions};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Requests each simulator keeps for inspection; the load tool reads the feeds instead,
/// so a small window is enough.
const RECORDED: usize = 1000;

/// Where the simulators listen and write their files.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub apns_addr: SocketAddr,
    pub fcm_addr: SocketAddr,
    pub sms_addr: SocketAddr,
    pub dir: PathBuf,
    /// FCM over HTTPS with HTTP/2, as Google serves it (else plain HTTP/1.1).
    pub fcm_tls: bool,
}

/// The running simulators.
pub struct Sims {
    pub apns: ApnsSim,
    pub fcm: FcmSim,
    pub sms: SmsSim,
    fcm_config: crate::config::FcmConfig,
}

impl Sims {
    pub async fn start(o: &SimOptions) -> anyhow::Result<Sims> {
        std::fs::create_dir_all(&o.dir).with_context(|| format!("creating {}", o.dir.display()))?;
        let apns = ApnsSim::start(ApnsSimOptions {
            addr: o.apns_addr,
            dir: Some(o.dir.join("apns")),
            max_recorded: RECORDED,
            ..Default::default()
        })
        .await
        .context("starting the APNs simulator")?;
        let fcm = FcmSim::start(FcmSimOptions {
            addr: o.fcm_addr,
            max_recorded: RECORDED,
            tls: o.fcm_tls,
            ..Default::default()
        })
        .await
        .context("starting the FCM simulator")?;
        let fdir = o.dir.join("fcm");
        std::fs::create_dir_all(&fdir)?;
        let fcm_config = fcm
            .write_config_files(&fdir)
            .context("writing the FCM service account")?;
        let sms = SmsSim::start(SmsSimOptions {
            addr: o.sms_addr,
            max_recorded: RECORDED,
            ..Default::default()
        })
        .await
        .context("starting the SMS simulator")?;
        Ok(Sims {
            apns,
            fcm,
            sms,
            fcm_config,
        })
    }

    /// The daemon's configuration for these simulators.
    pub fn apply(&self, cfg: &mut crate::Config) {
        cfg.apns = self.apns.config();
        cfg.fcm = self.fcm_config.clone();
        cfg.sms = self.sms.config(Shape::Webhook);
    }

    /// The `[apns]`, `[fcm]` and `[sms]` lines for the daemon's configuration file.
    pub fn config_toml(&self) -> String {
        let q = |s: &str| toml::Value::String(s.to_string()).to_string();
        let mut fcm = format!(
            "[fcm]\nendpoint = {}\nservice_account_file = {}\n",
            q(&self.fcm_config.endpoint),
            q(&self.fcm_config.service_account_file)
        );
        if !self.fcm_config.ca_file.is_empty() {
            fcm.push_str(&format!("ca_file = {}\n", q(&self.fcm_config.ca_file)));
        }
        format!(
            "{}\n{fcm}\n{}",
            self.apns.config_toml(),
            self.sms.config_toml(Shape::Webhook)
        )
    }

    /// New receivers on every simulator's feed.
    pub fn feeds(&self) -> Feeds {
        Feeds {
            apns: Some(self.apns.subscribe()),
            fcm: Some(self.fcm.subscribe()),
            sms: Some(self.sms.subscribe()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.apns.dir()
    }

    pub async fn shutdown(self) {
        self.apns.shutdown().await;
        self.fcm.shutdown().await;
        self.sms.shutdown().await;
    }
}
