//! Percentages (`60%`), sizes (`512M`, `8G`, or `80%` of the host) and durations (`200ms`).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A percentage in `0..=100`.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// Clamps into `0..=100` (NaN becomes 0).
    pub fn new(p: f64) -> Self {
        if p.is_nan() {
            Self(0.0)
        } else {
            Self(p.clamp(0.0, 100.0))
        }
    }
    pub fn get(self) -> f64 {
        self.0
    }
    /// `self` percent of `total`, rounded down.
    pub fn of(self, total: u64) -> u64 {
        ((total as f64) * self.0 / 100.0) as u64
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl FromStr for Percent {
    type Err = String;
    /// `60%` or `60`; must lie in `0..=100`.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let n = t.strip_suffix('%').unwrap_or(t).trim();
        let p: f64 = n
            .parse()
            .map_err(|_| format!("`{s}` is not a percentage (try `60%`)"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("percentage {p} is out of range 0..=100"));
        }
        Ok(Self(p))
    }
}

/// A memory size: bytes, or a percentage of a total (host memory, VM memory).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Bytes(u64),
    Percent(Percent),
}

impl Amount {
    /// Bytes, given the total a percentage refers to.
    pub fn resolve(self, total: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Percent(p) => p.of(total),
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "T"),
            (1 << 30, "G"),
            (1 << 20, "M"),
            (1 << 10, "K"),
        ];
        match self {
            Amount::Percent(p) => p.fmt(f),
            Amount::Bytes(b) => {
                for (size, unit) in UNITS {
                    if *b >= size && b % size == 0 {
                        return write!(f, "{}{unit}", b / size);
                    }
                }
                write!(f, "{b}")
            }
        }
    }
}

impl FromStr for Amount {
    type Err = String;
    /// `80%`, `512M`, `1.5G`, `2T`, `4096K`, or plain bytes.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.ends_with('%') {
            return t.parse().map(Amount::Percent);
        }
        let upper = t.to_ascii_uppercase();
        let digits = upper.trim_end_matches('B').trim_end_matches('I');
        let (num, mult) = match digits.chars().last() {
            Some('K') => (&digits[..digits.len() - 1], 1u64 << 10),
            Some('M') => (&digits[..digits.len() - 1], 1 << 20),
            Some('G') => (&digits[..digits.len() - 1], 1 << 30),
            Some('T') => (&digits[..digits.len() - 1], 1 << 40),
            _ => (digits, 1),
        };
        let bad = || format!("`{s}` is not a size (try `512M`, `8G` or `80%`)");
        let n: f64 = num.trim().parse().map_err(|_| bad())?;
        if !n.is_finite() || n < 0.0 || n * (mult as f64) > u64::MAX as f64 / 2.0 {
            return Err(bad());
        }
        Ok(Amount::Bytes((n * mult as f64) as u64))
    }
}

macro_rules! serde_as_text {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_as_text!(Percent);
serde_as_text!(Amount);

/// Parses `200ms`, `10s`, `1m30s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration ({e}); try `200ms`, `10s`, `5m`"))
}

/// Formats a duration the way policies write them (`200ms`, `30s`, `1m 30s`).
pub fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_and_print() {
        assert_eq!("512M".parse::<Amount>().unwrap(), Amount::Bytes(512 << 20));
        assert_eq!("8G".parse::<Amount>().unwrap().to_string(), "8G");
        assert_eq!(
            "80%".parse::<Amount>().unwrap(),
            Amount::Percent(Percent::new(80.0))
        );
        assert_eq!("1.5G".parse::<Amount>().unwrap().to_string(), "1536M");
        assert!("120%".parse::<Amount>().is_err());
        assert!("lots".parse::<Amount>().is_err());
        assert!("-1G".parse::<Amount>().is_err());
    }

    #[test]
    fn percent_of_total() {
        assert_eq!(Percent::new(80.0).of(1000), 800);
        assert!("101%".parse::<Percent>().is_err());
        assert_eq!("60".parse::<Percent>().unwrap(), Percent::new(60.0));
    }
}
