//! `keeper check FILE...`: parse and check policy files; print `FILE:LINE:COL: ...` findings.
use std::{path::PathBuf, process::ExitCode};

use crate::policy::{Diagnostic, HostFacts, Pos, read_capped};

use crate::{
    cpulist::CpuList,
    device::topology::BootFacts,
    policy::{IntruderRule, amount::format_duration},
    report::host_advice::host_advice,
};

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Policy files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Check for this host: trading or housekeeping cores that are not online here are errors
    /// (without it, warnings); and say what the kernel's boot parameters and SMT siblings give
    /// the trading cores, with the exact parameters a reboot would add.
    #[arg(long)]
    pub host: bool,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let online = CpuList::online().ok();
    let facts = HostFacts {
        online_cpus: online.clone(),
        for_this_host: args.host,
    };
    let mut failed = false;
    if args.host && online.is_none() {
        eprintln!("keeper: warning: cannot read the online CPUs of this host; CPU checks skipped");
    }
    for path in &args.files {
        let name = path.display().to_string();
        let bytes = match read_capped(path) {
            Ok(b) => b,
            Err(e) => {
                failed = true;
                println!(
                    "{}",
                    Diagnostic::error(Pos { line: 1, col: 1 }, format!("cannot read: {e}"))
                        .render(&name)
                );
                continue;
            }
        };
        match crate::policy::load(&bytes, &facts) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    println!("{}", w.render(&name));
                }
                println!("{name}: ok ({} workloads)", loaded.policy.workloads.len());
                if let Some(guard) = trading_guard(&loaded.policy) {
                    println!("{name}: {guard}");
                }
                if args.host {
                    boot_advice(&name, &loaded.policy.host);
                    vm_advice(&name, &loaded.policy);
                }
            }
            Err(diags) => {
                failed = true;
                for d in &diags.0 {
                    println!("{}", d.render(&name));
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `--host`: what this host's boot gives the policy's trading cores, and what only a reboot
/// can add (advice, not an error: the exit code stays the policy's).
fn boot_advice(name: &str, host: &crate::policy::Host) {
    let boot = BootFacts::read(&host.trading_cores);
    for finding in host_advice(&host.trading_cores, &host.housekeeping_cores, &boot) {
        println!("{name}: host: {finding}");
    }
}

/// `--host`: a VM owning the trading cores with more vCPUs than trading CPUs (running, or by
/// its Proxmox configuration).
fn vm_advice(name: &str, policy: &crate::policy::Policy) {
    let Ok(cg) = crate::device::cgroupfs::CgroupFs::discover() else {
        return;
    };
    let pve = std::path::Path::new("/etc/pve");
    if let Some(advice) = crate::report::vm_advice::vcpu_advice(policy, &cg, pve) {
        println!("{name}: host: {advice}");
    }
}

/// What the policy does to intruders on the trading cores, its defaults said: the owner, the
/// eviction on arrival, returns, repeat offenders and the intruder-share target. `None`
/// without a workload that owns the trading cores.
fn trading_guard(policy: &crate::policy::Policy) -> Option<String> {
    let owner = policy.workloads.iter().find(|w| w.owns_trading_cores)?;
    let rule = &policy.rules.intruders;
    let defaults = *rule == IntruderRule::default();
    let share = (policy.rules.slo.as_ref()).and_then(|s| s.trading_intruder_share);
    Some(format!(
        "trading cores {trading} while {owner} is active: any other task (of `--scope` where given) is evicted to {hk} at its arrival, \
         before it runs, and at once each time it comes back; {repeat} returns within {within} make a repeat \
         offender, {then} (rules.intruders: {{repeat: {repeat}, within: {within}, then: {t}{cap}}}{d}); a real-time intruder {rt}; intruders' share of each trading core {share}",
        trading = policy.host.trading_cores,
        owner = owner.name,
        hk = policy.host.housekeeping_cores,
        repeat = rule.repeat,
        within = format_duration(rule.within),
        then = rule.then.what(),
        t = rule.then.name(),
        cap = match rule.then {
            crate::policy::RepeatAction::Throttle => format!(", cpu_max: {}", rule.cpu_max),
            _ => String::new(),
        },
        d = if defaults { ", the defaults" } else { "" },
        rt = match rule.real_time {
            crate::policy::RealTimeIntruders::Demote => {
                "is demoted to SCHED_OTHER while it is off the trading cores".to_string()
            }
            crate::policy::RealTimeIntruders::Keep => format!(
                "keeps its real-time class on {} (real_time: keep: only the kernel's RT throttling bounds it there)",
                policy.host.housekeeping_cores
            ),
        },
        share = share.map_or_else(
            || "not judged (no slo.trading_intruder_share)".to_string(),
            |p| format!("judged against {p} (slo.trading_intruder_share)"),
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> crate::policy::Policy {
        let text = format!(
            "version: 1\nhost: {{ trading_cores: \"1\", housekeeping_cores: \"0\" }}\n\
             workloads:\n  - {{ name: banker, rank: 1, match: {{ vmid: 200 }}, owns_trading_cores: true }}\n{rules}"
        );
        crate::policy::load(text.as_bytes(), &Default::default())
            .unwrap()
            .policy
    }

    /// `keeper check` says what happens to intruders, the defaults named as such.
    #[test]
    fn check_explains_what_intruders_get() {
        let said = trading_guard(&policy("")).unwrap();
        assert!(
            said.contains("trading cores 1 while banker is active"),
            "{said}"
        );
        assert!(said.contains("evicted to 0 at its arrival"), "{said}");
        assert!(
            said.contains("3 returns within 10s make a repeat offender"),
            "{said}"
        );
        assert!(said.contains("its process stopped (SIGSTOP"), "{said}");
        assert!(
            said.contains("rules.intruders: {repeat: 3, within: 10s, then: stop}, the defaults"),
            "{said}"
        );
        assert!(said.contains("not judged"), "{said}");
        let said = trading_guard(&policy(
            "rules:\n  intruders: { repeat: 2, within: 5s, then: stop }\n  slo: { trading_intruder_share: 1% }\n",
        ))
        .unwrap();
        assert!(said.contains("2 returns within 5s"), "{said}");
        assert!(said.contains("SIGSTOP"), "{said}");
        assert!(!said.contains("defaults"), "{said}");
        assert!(said.contains("judged against 1%"), "{said}");
        let said = trading_guard(&policy("rules:\n  intruders: { then: throttle }\n")).unwrap();
        assert!(said.contains("its workload throttled"), "{said}");
        assert!(said.contains("then: throttle, cpu_max: 10%}"), "{said}");
        let said = trading_guard(&policy("rules:\n  intruders: { then: evict }\n")).unwrap();
        assert!(
            said.contains("does not hold the share against a task that pins itself back"),
            "{said}"
        );
    }
}
