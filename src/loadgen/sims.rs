//! The APNs, FCM, Huawei Push Kit and SMS simulators a daemon under load points at:
//! started together,
//! their files written to one directory, the configuration lines printed as `simulate`
//! prints them, and their feeds handed to the device players.

use super::player::Feeds;
use crate::sim::apns::{ApnsSim, ApnsSimOptions};
use crate::sim::fcm::{FcmSim, FcmSimOptions};
use crate::sim::hms::{HmsSim, HmsSimOptions};
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
    pub hms_addr: SocketAddr,
    pub sms_addr: SocketAddr,
    pub dir: PathBuf,
    /// FCM over HTTPS with HTTP/2, as Google serves it (else plain HTTP/1.1).
    pub fcm_tls: bool,
}

/// The running simulators.
pub struct Sims {
    pub apns: ApnsSim,
    pub fcm: FcmSim,
    pub hms: HmsSim,
    pub sms: SmsSim,
    fcm_config: crate::config::FcmConfig,
    hms_config: crate::config::HmsConfig,
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
        let hms = HmsSim::start(HmsSimOptions {
            addr: o.hms_addr,
            max_recorded: RECORDED,
            ..Default::default()
        })
        .await
        .context("starting the Push Kit simulator")?;
        let hdir = o.dir.join("hms");
        std::fs::create_dir_all(&hdir)?;
        let hms_config = hms
            .write_config_files(&hdir)
            .context("writing the Push Kit app secret")?;
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
            hms,
            sms,
            fcm_config,
            hms_config,
        })
    }

    /// The daemon's configuration for these simulators.
    pub fn apply(&self, cfg: &mut crate::Config) {
        cfg.apns = self.apns.config();
        cfg.fcm = self.fcm_config.clone();
        cfg.hms = self.hms_config.clone();
        cfg.sms = self.sms.config(Shape::Webhook);
    }

    /// The `[apns]`, `[fcm]`, `[hms]` and `[sms]` lines for the daemon's configuration
    /// file.
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
        let h = &self.hms_config;
        let hms = format!(
            "[hms]\nendpoint = {}\ntoken_endpoint = {}\napp_id = {}\napp_secret_file = {}\n",
            q(&h.endpoint),
            q(&h.token_endpoint),
            q(&h.app_id),
            q(&h.app_secret_file)
        );
        format!(
            "{}\n{fcm}\n{hms}\n{}",
            self.apns.config_toml(),
            self.sms.config_toml(Shape::Webhook)
        )
    }

    /// New receivers on every simulator's feed.
    pub fn feeds(&self) -> Feeds {
        Feeds {
            apns: Some(self.apns.subscribe()),
            fcm: Some(self.fcm.subscribe()),
            hms: Some(self.hms.subscribe()),
            sms: Some(self.sms.subscribe()),
        }
    }

    pub fn dir(&self) -> &Path {
        self.apns.dir()
    }

    pub async fn shutdown(self) {
        self.apns.shutdown().await;
        self.fcm.shutdown().await;
        self.hms.shutdown().await;
        self.sms.shutdown().await;
    }
}
