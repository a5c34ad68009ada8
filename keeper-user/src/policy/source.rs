//! Where the policy comes from (a file or the embedded policies/hive.yaml) and the
//! command-line overrides applied on top: one capped reader for `run`, `check`, `simulate`,
//! `reload` and `gpu`.

use std::{collections::BTreeMap, path::PathBuf};

use super::{Host, HostFacts, Match, Policy, Smt, Workload};
use crate::cpulist::CpuList;

/// Where the policy comes from, and the command-line overrides applied on top.
#[derive(Clone, Debug)]
pub struct PolicySource {
    /// `None`: the embedded policies/hive.yaml.
    pub file: Option<PathBuf>,
    pub trading_cores: Option<CpuList>,
    /// Cgroups that own the trading cores, always (replaces the owner's match and windows).
    pub protect: Vec<String>,
}

impl PolicySource {
    pub fn name(&self) -> String {
        self.file
            .as_ref()
            .map_or("embedded policies/hive.yaml".into(), |f| {
                f.display().to_string()
            })
    }

    /// Reads, checks (for this host) and applies the overrides. Errors read `FILE:LINE:COL`.
    pub fn load(&self) -> Result<Policy, String> {
        let (name, bytes) = match &self.file {
            Some(f) => (
                f.display().to_string(),
                super::read_capped(f).map_err(|e| format!("{}: {e}", f.display()))?,
            ),
            None => (
                "policies/hive.yaml".into(),
                super::HIVE_YAML.as_bytes().to_vec(),
            ),
        };
        let facts = HostFacts {
            online_cpus: CpuList::online().ok(),
            for_this_host: true,
        };
        let loaded = super::load(&bytes, &facts).map_err(|d| {
            d.0.iter()
                .map(|x| x.render(&name))
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        for w in &loaded.warnings {
            tracing::warn!("{}", w.render(&name));
        }
        let mut p = loaded.policy;
        if let Some(cores) = &self.trading_cores {
            let online = CpuList::online().unwrap_or_default();
            p.host.housekeeping_cores = online.difference(cores);
            p.host.trading_cores = cores.clone();
            if p.host.housekeeping_cores.is_empty() {
                return Err(format!(
                    "--trading-cores {cores} leaves no housekeeping core on this host"
                ));
            }
        }
        if let Some(first) = self.protect.first() {
            let owner = match p.workloads.iter_mut().find(|w| w.owns_trading_cores) {
                Some(w) => w,
                None => {
                    p.workloads.insert(0, protected_workload());
                    &mut p.workloads[0]
                }
            };
            owner.matcher = Match {
                cgroup: Some(first.trim_matches('/').to_string()),
                protect: self.protect[1..].to_vec(),
                ..Match::default()
            };
            owner.windows.clear();
            owner.conditions = Default::default();
        }
        Ok(p)
    }
}

/// `host.smt: reserve_siblings` on a host whose CPUs pair up as `siblings` (CPU → the CPUs of
/// its physical core): each trading core's siblings join the trading cores and leave the
/// housekeeping cores; the siblings added. No housekeeping core left is an error (nowhere to
/// move intruders to). `as_listed`: nothing changes.
pub fn reserve_siblings(
    host: &mut Host,
    siblings: &BTreeMap<u32, CpuList>,
) -> Result<CpuList, String> {
    if host.smt != Smt::ReserveSiblings {
        return Ok(CpuList::default());
    }
    let all = host
        .trading_cores
        .iter()
        .filter_map(|c| siblings.get(&c))
        .flat_map(CpuList::iter)
        .chain(host.trading_cores.iter());
    let trading = CpuList::new(all);
    let added = trading.difference(&host.trading_cores);
    let housekeeping = host.housekeeping_cores.difference(&added);
    if housekeeping.is_empty() {
        return Err(format!(
            "host.smt: reserve_siblings: the trading cores' siblings {added} leave no housekeeping core"
        ));
    }
    host.trading_cores = trading;
    host.housekeeping_cores = housekeeping;
    Ok(added)
}

fn protected_workload() -> Workload {
    Workload {
        name: "protected".into(),
        rank: 1,
        matcher: Match::default(),
        class: None,
        windows: vec![],
        conditions: Default::default(),
        when_inactive: Default::default(),
        pauses: vec![],
        preempt: None,
        owns_trading_cores: true,
        never_frozen: false,
        vcpu_fifo: None,
        gpu_handoff: None,
        start_on: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_protect_flag_is_protected() {
        let source = PolicySource {
            file: None,
            trading_cores: None,
            protect: vec!["kt/banker".into(), "/kt/banker2/".into()],
        };
        let p = source.load().unwrap();
        let owner = p.workloads.iter().find(|w| w.owns_trading_cores).unwrap();
        assert_eq!(owner.matcher.cgroups(), ["kt/banker", "kt/banker2"]);
        assert!(owner.matcher.owns_cgroup("kt/banker2/vcpu0"));
    }

    #[test]
    fn reserved_siblings_join_the_trading_cores_and_leave_the_housekeeping_ones() {
        let mut host = crate::policy::parse_str(crate::policy::ONE_HOST_YAML)
            .unwrap()
            .host;
        host.trading_cores = "1-2".parse().unwrap();
        host.housekeeping_cores = "0,3-7".parse().unwrap();
        let siblings: BTreeMap<u32, CpuList> = [(1, "1,5"), (2, "2,6")]
            .into_iter()
            .map(|(c, s)| (c, s.parse().unwrap()))
            .collect();
        // As listed (the default): nothing changes.
        assert!(reserve_siblings(&mut host, &siblings).unwrap().is_empty());
        assert_eq!(host.trading_cores.to_string(), "1-2");
        host.smt = Smt::ReserveSiblings;
        let added = reserve_siblings(&mut host, &siblings).unwrap();
        assert_eq!(added.to_string(), "5-6");
        assert_eq!(host.trading_cores.to_string(), "1-2,5-6");
        assert_eq!(host.housekeeping_cores.to_string(), "0,3-4,7");
        // No SMT (each core its own sibling): nothing changes.
        let alone: BTreeMap<u32, CpuList> = [(1, "1".parse().unwrap())].into_iter().collect();
        let mut plain = host.clone();
        plain.trading_cores = "1".parse().unwrap();
        assert!(reserve_siblings(&mut plain, &alone).unwrap().is_empty());
        assert_eq!(plain.trading_cores.to_string(), "1");
        // Siblings that would take every housekeeping core: refused, nothing changed.
        let mut two = host.clone();
        two.trading_cores = "1".parse().unwrap();
        two.housekeeping_cores = "5".parse().unwrap();
        let err = reserve_siblings(&mut two, &siblings).unwrap_err();
        assert!(err.contains("leave no housekeeping core"), "{err}");
        assert_eq!(two.trading_cores.to_string(), "1");
    }

    #[test]
    fn an_endless_policy_file_is_refused_without_reading_it_whole() {
        let source = PolicySource {
            file: Some("/dev/zero".into()),
            trading_cores: None,
            protect: vec![],
        };
        let err = source.load().unwrap_err();
        assert!(err.contains("at most"), "{err}");
    }
}
