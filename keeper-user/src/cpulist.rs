//! CPU lists in the kernel's notation (`0`, `1,3`, `2-5,7`), as in cpuset files and taskset.

use std::{collections::BTreeSet, fmt, str::FromStr};

/// A set of CPU numbers, kept sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CpuList(BTreeSet<u32>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuListError {
    #[error("empty CPU list")]
    Empty,
    #[error("`{0}` is not a CPU number")]
    NotANumber(String),
    #[error("range `{0}` runs backwards")]
    Backwards(String),
    #[error("CPU {0} is beyond the highest CPU the keeper supports ({max})", max = keeper_common::MAX_CPUS - 1)]
    TooHigh(u32),
}

impl CpuList {
    pub fn new(cpus: impl IntoIterator<Item = u32>) -> Self {
        Self(cpus.into_iter().collect())
    }
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn intersection(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.intersection(&other.0).copied().collect())
    }
    pub fn difference(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.difference(&other.0).copied().collect())
    }
    /// The CPUs this host has online (`/sys/devices/system/cpu/online`).
    pub fn online() -> std::io::Result<CpuList> {
        let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
        text.trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

impl FromStr for CpuList {
    type Err = CpuListError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(CpuListError::Empty);
        }
        let num = |t: &str| -> Result<u32, CpuListError> {
            let n: u32 = t
                .trim()
                .parse()
                .map_err(|_| CpuListError::NotANumber(t.trim().to_string()))?;
            if n >= keeper_common::MAX_CPUS {
                return Err(CpuListError::TooHigh(n));
            }
            Ok(n)
        };
        let mut set = BTreeSet::new();
        for part in s.split(',') {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(CpuListError::Backwards(part.trim().to_string()));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(num(part)?);
                }
            }
        }
        Ok(CpuList(set))
    }
}

impl fmt::Display for CpuList {
    /// Writes the compact form, `0-2,5`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end = iter.next().unwrap_or(end);
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let l: CpuList = "0, 2-4,7".parse().unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![0, 2, 3, 4, 7]);
        assert_eq!(l.to_string(), "0,2-4,7");
    }

    #[test]
    fn refuses_junk() {
        assert_eq!("".parse::<CpuList>(), Err(CpuListError::Empty));
        assert_eq!(
            "3-1".parse::<CpuList>(),
            Err(CpuListError::Backwards("3-1".into()))
        );
        assert_eq!(
            "x".parse::<CpuList>(),
            Err(CpuListError::NotANumber("x".into()))
        );
        assert_eq!("9999".parse::<CpuList>(), Err(CpuListError::TooHigh(9999)));
    }
}
