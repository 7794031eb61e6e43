//! The mix of a load run: weighted shares (`login=3,payment=1`) of challenge kinds, device
//! platforms and device answers, and a deterministic pick per challenge so a run can be
//! replayed. A new push platform is one more [`Platform`] variant (its name, its token
//! shape, its simulator feed in `devices`).

use std::fmt;
use std::str::FromStr;

/// Largest sum of weights accepted (keeps picks cheap and shares meaningful).
const MAX_TOTAL_WEIGHT: u64 = 1_000_000;

/// Weighted shares of `T`, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Shares<T> {
    items: Vec<(T, u64)>,
    total: u64,
}

/// A share list that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MixError(pub String);

impl fmt::Display for MixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MixError {}

impl<T: FromStr + PartialEq + Copy> Shares<T>
where
    T::Err: fmt::Display,
{
    /// Reads `name=weight,name=weight` (a bare `name` weighs 1; weight 0 is allowed but
    /// at least one must be positive).
    pub fn parse(s: &str) -> Result<Shares<T>, MixError> {
        let mut items: Vec<(T, u64)> = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = match part.split_once('=') {
                Some((n, w)) => {
                    let w = w.trim().parse::<u64>().map_err(|_| {
                        MixError(format!("`{part}`: the weight must be a whole number"))
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1),
            };
            let item = name
                .parse::<T>()
                .map_err(|e| MixError(format!("`{name}`: {e}")))?;
            if items.iter().any(|(i, _)| *i == item) {
                return Err(MixError(format!("`{name}` is given twice")));
            }
            items.push((item, w));
        }
        Shares::new(items)
    }

    pub fn new(items: Vec<(T, u64)>) -> Result<Shares<T>, MixError> {
        let total = items
            .iter()
            .map(|(_, w)| *w)
            .fold(0u64, u64::saturating_add);
        if total == 0 {
            return Err(MixError("at least one share must be positive".into()));
        }
        if total > MAX_TOTAL_WEIGHT {
            return Err(MixError(format!(
                "the weights add up to {total}, at most {MAX_TOTAL_WEIGHT}"
            )));
        }
        Ok(Shares { items, total })
    }

    /// The item for challenge `seq`; `salt` makes the picks of different mixes
    /// independent of each other.
    pub fn pick(&self, seq: u64, salt: u64) -> T {
        let mut x = mix64(seq ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)) % self.total;
        for (item, w) in &self.items {
            if x < *w {
                return *item;
            }
            x -= w;
        }
        self.items[self.items.len() - 1].0
    }

    /// The share of `item`, 0..=1.
    pub fn share(&self, item: T) -> f64 {
        self.items
            .iter()
            .filter(|(i, _)| *i == item)
            .map(|(_, w)| *w as f64 / self.total as f64)
            .sum()
    }

    pub fn items(&self) -> impl Iterator<Item = (T, u64)> + '_ {
        self.items.iter().copied()
    }
}

impl<T: fmt::Display> fmt::Display for Shares<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (item, w)) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{item}={w}")?;
        }
        Ok(())
    }
}

/// splitmix64's finaliser: a cheap, well-spread hash of the sequence number.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Generates a `FromStr` + `Display` enum over fixed names.
macro_rules! named {
    ($(#[$m:meta])* $name:ident, $what:literal { $($v:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($v),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
        }
        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($name::$v),)+
                    _ => Err(format!(
                        concat!("unknown ", $what, " (one of: {})"),
                        [$($s),+].join(", ")
                    )),
                }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

named!(
    /// A challenge kind of the wire contract.
    Kind, "kind" {
        Login => "login",
        Payment => "payment",
        DeviceBinding => "device_binding",
        CredentialRecovery => "credential_recovery",
        Other => "other",
    }
);

named!(
    /// A push platform the load tool can simulate devices on.
    Platform, "platform" {
        Apns => "apns",
        Fcm => "fcm",
        Hms => "hms",
    }
);

named!(
    /// What a simulated device does with its push.
    Answer, "answer" {
        Approve => "approve",
        Deny => "deny",
        Ignore => "ignore",
    }
);

impl Platform {
    /// A device token of the platform's shape, distinct per challenge and device.
    pub fn token(self, seq: u64, device: usize) -> String {
        match self {
            Platform::Apns => format!("{:056x}{:08x}", seq, device),
            Platform::Fcm => format!("load-{seq}-{device}"),
            Platform::Hms => format!("hms-load-{seq}-{device}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_weights_and_bare_names() {
        let s: Shares<Kind> = Shares::parse("login=3, payment").unwrap();
        assert_eq!(s.share(Kind::Login), 0.75);
        assert_eq!(s.share(Kind::Payment), 0.25);
        assert_eq!(s.share(Kind::Other), 0.0);
        assert_eq!(s.to_string(), "login=3,payment=1");
    }

    #[test]
    fn refuses_bad_lists_with_the_reason() {
        let e = Shares::<Kind>::parse("login=x").unwrap_err().0;
        assert!(e.contains("whole number"), "{e}");
        let e = Shares::<Platform>::parse("wns=1").unwrap_err().0;
        assert!(
            e.contains("unknown platform") && e.contains("apns, fcm, hms"),
            "{e}"
        );
        let e = Shares::<Kind>::parse("login=0").unwrap_err().0;
        assert!(e.contains("positive"), "{e}");
        let e = Shares::<Kind>::parse("").unwrap_err().0;
        assert!(e.contains("positive"), "{e}");
        let e = Shares::<Kind>::parse("login,login").unwrap_err().0;
        assert!(e.contains("twice"), "{e}");
        let e = Shares::<Kind>::parse("login=999999999999").unwrap_err().0;
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn picks_follow_the_shares_and_are_reproducible() {
        let s: Shares<Answer> = Shares::parse("approve=80,deny=15,ignore=5").unwrap();
        let n = 100_000u64;
        let mut counts = [0u64; 3];
        for seq in 0..n {
            let a = s.pick(seq, 7);
            assert_eq!(a, s.pick(seq, 7));
            counts[a as usize] += 1;
        }
        let frac = |i: usize| counts[i] as f64 / n as f64;
        assert!((frac(0) - 0.80).abs() < 0.01, "{counts:?}");
        assert!((frac(1) - 0.15).abs() < 0.01, "{counts:?}");
        assert!((frac(2) - 0.05).abs() < 0.01, "{counts:?}");
    }

    #[test]
    fn different_salts_pick_independently() {
        let s: Shares<Platform> = Shares::parse("apns=1,fcm=1").unwrap();
        let same = (0..10_000u64)
            .filter(|&q| s.pick(q, 1) == s.pick(q, 2))
            .count();
        assert!((4_000..6_000).contains(&same), "{same}");
    }

    #[test]
    fn a_zero_weight_is_never_picked() {
        let s: Shares<Kind> = Shares::parse("login=1,payment=0").unwrap();
        assert!((0..1000).all(|q| s.pick(q, 0) == Kind::Login));
    }

    #[test]
    fn tokens_have_the_platform_shape() {
        let t = Platform::Apns.token(5, 1);
        assert_eq!(t.len(), 64);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(t, Platform::Apns.token(5, 0));
        assert_eq!(Platform::Fcm.token(5, 1), "load-5-1");
        assert_eq!(Platform::Hms.token(5, 1), "hms-load-5-1");
    }
}
