//! The faults the chaos runner puts the daemon through, their names on the command line,
//! their order, and how long each lasts.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A fault, in the order of a full run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// SIGKILL of the daemon, started again 2 s later.
    Sigkill,
    /// `rabbitmqctl stop_app`, 5 s, `start_app`.
    BrokerRestart,
    /// The daemon's broker connections closed by the broker.
    ConnectionClose,
    /// The APNs simulator answers 503 to every push.
    Apns503,
    /// The APNs simulator answers nothing.
    ApnsStall,
    /// The FCM token endpoint answers 503, and the tokens issued are revoked so the
    /// daemon has to renew.
    FcmTokenDown,
    /// The SMS gateway answers 503.
    SmsDown,
    /// Cluster mode: SIGKILL of one of three instances, started again when the fault
    /// ends.
    ClusterSigkill,
}

impl FaultKind {
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Sigkill,
        FaultKind::BrokerRestart,
        FaultKind::ConnectionClose,
        FaultKind::Apns503,
        FaultKind::ApnsStall,
        FaultKind::FcmTokenDown,
        FaultKind::SmsDown,
        FaultKind::ClusterSigkill,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Sigkill => "sigkill",
            FaultKind::BrokerRestart => "broker-restart",
            FaultKind::ConnectionClose => "connection-close",
            FaultKind::Apns503 => "apns-503",
            FaultKind::ApnsStall => "apns-stall",
            FaultKind::FcmTokenDown => "fcm-token-down",
            FaultKind::SmsDown => "sms-down",
            FaultKind::ClusterSigkill => "cluster-sigkill",
        }
    }

    /// Every fault but the one that needs cluster mode.
    pub fn single_instance() -> Vec<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .filter(|f| *f != FaultKind::ClusterSigkill)
            .collect()
    }

    /// How long the fault lasts when the 20 s faults last `long` (the broker's 5 s and
    /// the restart's 2 s scale with it; a closed connection is instant).
    pub fn duration(self, long: Duration) -> Duration {
        match self {
            FaultKind::Sigkill => Duration::from_secs(2).min(long),
            FaultKind::BrokerRestart => long / 4,
            FaultKind::ConnectionClose => Duration::ZERO,
            _ => long,
        }
    }

    /// Reads `a,b,c`: known names, each at most once, in the order given.
    pub fn parse_list(s: &str) -> Result<Vec<FaultKind>, String> {
        let mut out = Vec::new();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let f: FaultKind = name.parse()?;
            if out.contains(&f) {
                return Err(format!("`{name}` is given twice"));
            }
            out.push(f);
        }
        if out.is_empty() {
            return Err("no fault named".into());
        }
        Ok(out)
    }
}

impl FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = FaultKind::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown fault `{s}` (one of: {})", names.join(", "))
            })
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lists_are_checked() {
        for f in FaultKind::ALL {
            assert_eq!(f.as_str().parse::<FaultKind>().unwrap(), f);
        }
        assert_eq!(
            FaultKind::parse_list("sms-down, sigkill").unwrap(),
            vec![FaultKind::SmsDown, FaultKind::Sigkill]
        );
        assert!(FaultKind::parse_list("sigkill,sigkill").is_err());
        assert!(FaultKind::parse_list("").is_err());
        let e = FaultKind::parse_list("nope").unwrap_err();
        assert!(e.contains("apns-503"), "{e}");
        assert_eq!(FaultKind::single_instance().len(), 7);
    }

    #[test]
    fn durations_scale() {
        let long = Duration::from_secs(20);
        assert_eq!(
            FaultKind::BrokerRestart.duration(long),
            Duration::from_secs(5)
        );
        assert_eq!(FaultKind::Sigkill.duration(long), Duration::from_secs(2));
        assert_eq!(FaultKind::ApnsStall.duration(long), long);
        let short = Duration::from_secs(4);
        assert_eq!(
            FaultKind::BrokerRestart.duration(short),
            Duration::from_secs(1)
        );
        assert_eq!(FaultKind::ConnectionClose.duration(short), Duration::ZERO);
    }
}
