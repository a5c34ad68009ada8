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
    pub fn union(&self, other: &CpuList) -> CpuList {
        CpuList(self.0.union(&other.0).copied().collect())
    }
    /// The kernel's hex mask form (`3`, `ffffffff,00000001`: 32-bit groups, highest first), as
    /// in `/sys/devices/virtual/workqueue/cpumask`.
    pub fn to_mask(&self) -> String {
        let top = self.0.last().map_or(0, |c| *c as usize / 32);
        let mut words = vec![0u32; top + 1];
        for c in &self.0 {
            words[*c as usize / 32] |= 1 << (c % 32);
        }
        let mut out: Vec<String> = vec![format!("{:x}", words[top])];
        out.extend(words[..top].iter().rev().map(|w| format!("{w:08x}")));
        out.join(",")
    }

    /// Parses the hex mask form back (`3`, `ffffffff,00000001`); `None` if it is not one.
    pub fn from_mask(text: &str) -> Option<CpuList> {
        let mut set = BTreeSet::new();
        for (i, group) in text.trim().split(',').rev().enumerate() {
            let w = u32::from_str_radix(group.trim(), 16).ok()?;
            set.extend(
                (0..32)
                    .filter(|b| w & (1 << b) != 0)
                    .map(|b| i as u32 * 32 + b),
            );
        }
        Some(CpuList(set))
    }

    /// The CPUs this host has online (`/sys/devices/system/cpu/online`).
    pub fn online() -> std::io::Result<CpuList> {
        Self::of_host("online")
    }

    /// The CPUs this host can ever bring online (`/sys/devices/system/cpu/possible`, fixed at
    /// boot).
    pub fn possible() -> std::io::Result<CpuList> {
        Self::of_host("possible")
    }

    fn of_host(which: &str) -> std::io::Result<CpuList> {
        let text = std::fs::read_to_string(format!("/sys/devices/system/cpu/{which}"))?;
        text.trim()
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// The CPUs whose bits are set in `words` (bit `n % 64` of word `n / 64` for CPU `n`, the
    /// kernel's cpumask layout).
    pub fn from_bits(words: &[u64]) -> CpuList {
        let bits = words.iter().enumerate().flat_map(|(w, &word)| {
            (0..64u32)
                .filter(move |b| word >> b & 1 == 1)
                .map(move |b| w as u32 * 64 + b)
        });
        CpuList::new(bits)
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
    #[test]
    fn masks_are_32_bit_hex_groups_highest_first() {
        let l = |t: &str| t.parse::<CpuList>().unwrap();
        assert_eq!(l("0-1").to_mask(), "3");
        assert_eq!(l("0").to_mask(), "1");
        assert_eq!(l("1,35").to_mask(), "8,00000002");
        assert_eq!(l("0-31,32").to_mask(), "1,ffffffff");
        for t in ["0", "1", "0-1", "1,35", "0-63", "2-5,7,100"] {
            assert_eq!(CpuList::from_mask(&l(t).to_mask()), Some(l(t)), "{t}");
        }
        assert_eq!(CpuList::from_mask("zz"), None);
    }

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

    #[test]
    fn reads_the_kernels_mask_words() {
        let l = |t: &str| t.parse::<CpuList>().unwrap();
        assert_eq!(CpuList::from_bits(&[0b110, 0, 0, 0]), l("1-2"));
        assert_eq!(CpuList::from_bits(&[1, 1 << 3, 0, 1 << 63]), l("0,67,255"));
        assert!(CpuList::from_bits(&[0; 4]).is_empty());
        assert!(CpuList::possible().unwrap().contains(0));
    }
}
