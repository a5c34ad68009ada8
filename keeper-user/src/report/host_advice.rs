//! `keeper check --host`: what only a reboot can give the trading cores, said with the exact
//! kernel parameters (the keeper changes IRQs, workqueues and tasks at run time; the tick,
//! RCU callbacks and managed IRQs are fixed at boot), and SMT siblings shared with the
//! housekeeping cores. Pure: `device::topology` reads the facts.

use crate::{cpulist::CpuList, device::topology::BootFacts};

/// One finding: met, or advice to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Advice(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Ok(s) => write!(f, "ok: {s}"),
            Finding::Advice(s) => write!(f, "advice: {s}"),
        }
    }
}

/// The boot parameters that isolate `trading` (tuned's cpu-partitioning profile sets the
/// same), then the SMT siblings of each trading core.
pub fn host_advice(trading: &CpuList, housekeeping: &CpuList, boot: &BootFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    let covers = |name: &str| {
        boot.params
            .get(name)
            .map(|v| cpus_of(v))
            .is_some_and(|c| trading.difference(&c).is_empty())
    };
    for (param, what) in [
        (
            "nohz_full",
            "no scheduler tick on a trading core while one task runs there",
        ),
        (
            "rcu_nocbs",
            "RCU callbacks run on the housekeeping cores, not the trading cores",
        ),
    ] {
        out.push(match covers(param) {
            true => Finding::Ok(format!("{param} covers the trading cores {trading}")),
            false => Finding::Advice(format!(
                "add `{param}={trading}` to the kernel command line ({what}; needs a reboot)"
            )),
        });
    }
    let managed = boot
        .params
        .get("isolcpus")
        .is_some_and(|v| v.split(',').any(|f| f == "managed_irq") && covers("isolcpus"));
    out.push(match managed {
        true => Finding::Ok(format!(
            "isolcpus=managed_irq covers the trading cores {trading}"
        )),
        false => Finding::Advice(format!(
            "add `isolcpus=managed_irq,{trading}` (managed IRQs, which no one can move at run \
             time, stay off the trading cores; needs a reboot)"
        )),
    });
    out.push(match boot.params.get("irqaffinity").map(|v| cpus_of(v)) {
        Some(c) if c.intersection(trading).is_empty() && !c.is_empty() => Finding::Ok(format!(
            "irqaffinity={c} keeps new IRQs off the trading cores"
        )),
        _ => Finding::Advice(format!(
            "add `irqaffinity={housekeeping}` (IRQs start on the housekeeping cores; \
             `host.irq_guard` moves them at run time meanwhile)"
        )),
    });
    out.extend(smt(trading, housekeeping, boot));
    out
}

/// A trading core whose SMT sibling is a housekeeping core shares its execution units with
/// whatever runs there.
fn smt(trading: &CpuList, housekeeping: &CpuList, boot: &BootFacts) -> Vec<Finding> {
    let mut out = Vec::new();
    for cpu in trading.iter() {
        let Some(siblings) = boot.siblings.get(&cpu) else {
            continue;
        };
        let shared = siblings.intersection(housekeeping);
        out.push(if shared.is_empty() {
            Finding::Ok(format!(
                "trading core {cpu} shares its physical core with no housekeeping core (siblings {siblings})"
            ))
        } else {
            Finding::Advice(format!(
                "trading core {cpu} shares its physical core with housekeeping core {shared} \
                 (SMT): reserve it (`host.smt: reserve_siblings`), make it a trading core, \
                 or turn SMT off (`nosmt`)"
            ))
        });
    }
    out
}

/// A parameter's CPU list (`isolcpus=managed_irq,domain,1-3` → 1-3); empty when unreadable.
fn cpus_of(value: &str) -> CpuList {
    let list: Vec<&str> = value
        .split(',')
        .filter(|p| p.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    list.join(",").parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::topology::parse_cmdline;

    fn facts(cmdline: &str, siblings: &[(u32, &str)]) -> BootFacts {
        BootFacts {
            params: parse_cmdline(cmdline),
            siblings: siblings
                .iter()
                .map(|(c, s)| (*c, s.parse().unwrap()))
                .collect(),
        }
    }

    fn cpus(s: &str) -> CpuList {
        s.parse().unwrap()
    }

    #[test]
    fn a_plain_boot_gets_the_exact_parameters() {
        let f = host_advice(
            &cpus("2-3"),
            &cpus("0-1"),
            &facts("quiet", &[(2, "2"), (3, "3")]),
        );
        let advice: Vec<String> = f
            .iter()
            .filter(|f| matches!(f, Finding::Advice(_)))
            .map(ToString::to_string)
            .collect();
        assert_eq!(advice.len(), 4, "{advice:#?}");
        assert!(advice[0].contains("`nohz_full=2-3`"), "{}", advice[0]);
        assert!(advice[1].contains("`rcu_nocbs=2-3`"));
        assert!(advice[2].contains("`isolcpus=managed_irq,2-3`"));
        assert!(advice[3].contains("`irqaffinity=0-1`"));
    }

    #[test]
    fn an_isolated_boot_is_ok_and_a_shared_physical_core_is_said() {
        let boot = facts(
            "nohz_full=1-3 rcu_nocbs=1-7 isolcpus=managed_irq,domain,1-3 irqaffinity=0 -- x",
            &[(1, "1,5"), (2, "2,6"), (3, "3")],
        );
        let f = host_advice(&cpus("1-3"), &cpus("0,4-7"), &boot);
        let text: Vec<String> = f.iter().map(ToString::to_string).collect();
        assert!(text[..4].iter().all(|l| l.starts_with("ok: ")), "{text:#?}");
        assert_eq!(
            text[4],
            "advice: trading core 1 shares its physical core with housekeeping core 5 (SMT): \
             reserve it (`host.smt: reserve_siblings`), make it a trading core, or turn SMT off \
             (`nosmt`)"
        );
        assert!(text[5].contains("housekeeping core 6"));
        assert!(text[6].starts_with("ok: trading core 3"));
    }

    #[test]
    fn a_list_that_misses_a_trading_core_is_not_enough() {
        let f = host_advice(&cpus("1-2"), &cpus("0"), &facts("nohz_full=1", &[]));
        assert!(matches!(&f[0], Finding::Advice(a) if a.contains("nohz_full=1-2")));
    }
}
