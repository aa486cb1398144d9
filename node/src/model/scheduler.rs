//! IPVS schedulers and their flags.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::{ModelError, invalid};

/// The 14 IPVS schedulers, named as the kernel modules `ip_vs_<name>` are.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheduler {
    Rr,
    Wrr,
    Lc,
    /// ipvsadm's default, so it is ours too.
    #[default]
    Wlc,
    Lblc,
    Lblcr,
    Dh,
    Sh,
    Sed,
    Nq,
    Fo,
    Ovf,
    Mh,
    Twos,
}

impl Scheduler {
    pub const ALL: [Scheduler; 14] = [
        Scheduler::Rr,
        Scheduler::Wrr,
        Scheduler::Lc,
        Scheduler::Wlc,
        Scheduler::Lblc,
        Scheduler::Lblcr,
        Scheduler::Dh,
        Scheduler::Sh,
        Scheduler::Sed,
        Scheduler::Nq,
        Scheduler::Fo,
        Scheduler::Ovf,
        Scheduler::Mh,
        Scheduler::Twos,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scheduler::Rr => "rr",
            Scheduler::Wrr => "wrr",
            Scheduler::Lc => "lc",
            Scheduler::Wlc => "wlc",
            Scheduler::Lblc => "lblc",
            Scheduler::Lblcr => "lblcr",
            Scheduler::Dh => "dh",
            Scheduler::Sh => "sh",
            Scheduler::Sed => "sed",
            Scheduler::Nq => "nq",
            Scheduler::Fo => "fo",
            Scheduler::Ovf => "ovf",
            Scheduler::Mh => "mh",
            Scheduler::Twos => "twos",
        }
    }
}

impl fmt::Display for Scheduler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scheduler {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match Scheduler::ALL.into_iter().find(|x| x.as_str() == s) {
            Some(x) => Ok(x),
            None => {
                let names: Vec<&str> = Scheduler::ALL.iter().map(|x| x.as_str()).collect();
                invalid!("unknown scheduler \"{s}\" (valid: {})", names.join(", "))
            }
        }
    }
}

/// One scheduler flag. IPVS has three anonymous bits (flag-1..3) whose meaning depends on the
/// scheduler: for sh and mh, flag-1 is "fallback" and flag-2 is "port".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SchedFlag {
    ShFallback,
    ShPort,
    MhFallback,
    MhPort,
}

impl SchedFlag {
    pub const ALL: [SchedFlag; 4] = [
        SchedFlag::ShFallback,
        SchedFlag::ShPort,
        SchedFlag::MhFallback,
        SchedFlag::MhPort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SchedFlag::ShFallback => "sh-fallback",
            SchedFlag::ShPort => "sh-port",
            SchedFlag::MhFallback => "mh-fallback",
            SchedFlag::MhPort => "mh-port",
        }
    }

    /// The only scheduler that gives this flag a meaning.
    pub fn scheduler(self) -> Scheduler {
        match self {
            SchedFlag::ShFallback | SchedFlag::ShPort => Scheduler::Sh,
            SchedFlag::MhFallback | SchedFlag::MhPort => Scheduler::Mh,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for SchedFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SchedFlag {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match SchedFlag::ALL.into_iter().find(|x| x.as_str() == s) {
            Some(x) => Ok(x),
            None => invalid!(
                "unknown scheduler flag \"{s}\" (valid: sh-fallback, sh-port, mh-fallback, mh-port)"
            ),
        }
    }
}

/// A set of [`SchedFlag`]s. Serialized as a list of flag names; displayed comma separated as
/// ipvsadm's `-b` takes them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(into = "Vec<SchedFlag>", from = "Vec<SchedFlag>")]
pub struct SchedFlags(u8);

impl SchedFlags {
    pub const fn empty() -> Self {
        SchedFlags(0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn contains(self, flag: SchedFlag) -> bool {
        self.0 & flag.bit() != 0
    }

    /// Adds a flag; returns false if it was already there.
    pub fn insert(&mut self, flag: SchedFlag) -> bool {
        let had = self.contains(flag);
        self.0 |= flag.bit();
        !had
    }

    pub fn remove(&mut self, flag: SchedFlag) {
        self.0 &= !flag.bit();
    }

    /// The flags in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = SchedFlag> {
        SchedFlag::ALL
            .into_iter()
            .filter(move |f| self.contains(*f))
    }

    /// Every flag must belong to `scheduler`: IPVS would give it another meaning otherwise.
    pub fn check_for(self, scheduler: Scheduler) -> Result<(), ModelError> {
        if let Some(flag) = self.iter().find(|f| f.scheduler() != scheduler) {
            invalid!(
                "scheduler flag {flag} needs scheduler {} (scheduler is {scheduler})",
                flag.scheduler()
            );
        }
        Ok(())
    }

    /// Parses a list of names; a name given twice is an error because it is likely a typo.
    pub fn parse_list<S: AsRef<str>>(names: &[S]) -> Result<Self, ModelError> {
        let mut flags = SchedFlags::empty();
        for name in names {
            let flag: SchedFlag = name.as_ref().parse()?;
            if !flags.insert(flag) {
                invalid!("scheduler flag {flag} is listed twice");
            }
        }
        Ok(flags)
    }

    pub fn names(self) -> Vec<String> {
        self.iter().map(|f| f.as_str().to_owned()).collect()
    }
}

impl FromIterator<SchedFlag> for SchedFlags {
    fn from_iter<I: IntoIterator<Item = SchedFlag>>(iter: I) -> Self {
        let mut flags = SchedFlags::empty();
        for f in iter {
            flags.insert(f);
        }
        flags
    }
}

impl From<Vec<SchedFlag>> for SchedFlags {
    fn from(v: Vec<SchedFlag>) -> Self {
        v.into_iter().collect()
    }
}

impl From<SchedFlags> for Vec<SchedFlag> {
    fn from(f: SchedFlags) -> Self {
        f.iter().collect()
    }
}

impl fmt::Display for SchedFlags {
    /// "sh-fallback,sh-port"; "none" when empty so a diff never shows a blank.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        for (i, flag) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(flag.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_names_round_trip() {
        for s in Scheduler::ALL {
            assert_eq!(s.as_str().parse::<Scheduler>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Scheduler::default(), Scheduler::Wlc);
        let err = "wrrr".parse::<Scheduler>().unwrap_err().to_string();
        assert!(err.contains("\"wrrr\""), "{err}");
        assert!(
            err.contains("rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, fo, ovf, mh, twos"),
            "{err}"
        );
    }

    #[test]
    fn flags_set() {
        let flags = SchedFlags::parse_list(&["sh-port", "sh-fallback"]).unwrap();
        assert_eq!(flags.to_string(), "sh-fallback,sh-port");
        assert!(flags.check_for(Scheduler::Sh).is_ok());
        let err = flags.check_for(Scheduler::Mh).unwrap_err().to_string();
        assert!(
            err.contains("sh-fallback needs scheduler sh (scheduler is mh)"),
            "{err}"
        );
        let err = SchedFlags::parse_list(&["mh-port", "mh-port"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("listed twice"), "{err}");
        assert!(SchedFlags::parse_list(&["flag-1"]).is_err());
        let json = serde_json::to_string(&flags).unwrap();
        assert_eq!(json, r#"["sh-fallback","sh-port"]"#);
        assert_eq!(serde_json::from_str::<SchedFlags>(&json).unwrap(), flags);
        assert_eq!(SchedFlags::empty().to_string(), "none");
    }
}
