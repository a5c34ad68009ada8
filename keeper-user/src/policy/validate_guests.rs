//! Two workloads never name the same guest or process: a VM or container in both (a `vmid`
//! or `ctid` range over another workload's) would be frozen, throttled or stopped by the
//! escalation of either, the Banker's VM by a lab's. Refused at the later workload in the
//! file, naming the earlier one and the ids they share. VMs and containers are apart
//! (`qemu.slice/N.scope` beside `lxc/N`).

use super::at::{At, Pos};
use super::raw::RawWorkload;
use super::types::{IdRange, Workload};
use super::validate::Checker;

/// One kind of guest id a workload names, where it was written.
struct Named<'a> {
    workload: &'a str,
    ids: IdRange,
    pos: Pos,
}

impl Checker<'_> {
    pub(super) fn shared_guests(&mut self, raw: &[At<RawWorkload>], built: &[Workload]) {
        let mut vms: Vec<Named> = Vec::new();
        let mut cts: Vec<Named> = Vec::new();
        let mut processes: Vec<(&str, &str, Pos)> = Vec::new();
        for r in raw {
            let name = r.value.name.value.as_str();
            let Some(w) = built.iter().find(|w| w.name == name) else {
                continue;
            };
            let m = &r.value.matcher.value;
            let vm = w.matcher.vmid.map(|v| IdRange { first: v, last: v });
            if let (Some(ids), Some(at)) = (vm.or(w.matcher.vmids), &m.vmid) {
                self.shared(&vms, name, ids, at.pos, ("vmid", "VM", "VMs"));
                vms.push(Named {
                    workload: name,
                    ids,
                    pos: at.pos,
                });
            }
            if let (Some(ids), Some(at)) = (w.matcher.ctids, &m.ctid) {
                self.shared(&cts, name, ids, at.pos, ("ctid", "container", "containers"));
                cts.push(Named {
                    workload: name,
                    ids,
                    pos: at.pos,
                });
            }
            if let (Some(p), Some(at)) = (&w.matcher.process, &m.process) {
                if let Some((other, _, first)) = processes.iter().find(|(_, q, _)| q == p) {
                    self.err(
                        at.pos,
                        &format!("{name}.match.process"),
                        format!("processes named `{p}` are also `{other}`'s (`process: {p}` at {first}): give one of them a cgroup instead"),
                    );
                }
                processes.push((name, p.as_str(), at.pos));
            }
        }
    }

    /// An error at `pos` for each earlier workload among `earlier` whose ids meet `ids`.
    fn shared(
        &mut self,
        earlier: &[Named],
        name: &str,
        ids: IdRange,
        pos: Pos,
        (key, one, many): (&str, &str, &str),
    ) {
        for e in earlier {
            let first = ids.first.max(e.ids.first);
            let last = ids.last.min(e.ids.last);
            if first > last {
                continue;
            }
            let both = IdRange { first, last };
            let what = if first == last { one } else { many };
            let verb = if first == last { "is" } else { "are" };
            self.err(
                pos,
                &format!("{name}.match.{key}"),
                format!(
                    "{what} {both} {verb} also `{}`'s (`{key}: {}` at {}): a freeze, throttle or stop of either would reach it",
                    e.workload, e.ids, e.pos
                ),
            );
        }
    }
}
