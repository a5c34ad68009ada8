//! Kernel noise on the trading cores, by name: hard IRQ time per interrupt line and net
//! softirq time per vector, read from the scheduler object's noise programs
//! (keeper-ebpf/src/noise.rs). Totals since the sensor attached; a window is the difference
//! of two readouts.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::{MapData, PerCpuArray, PerCpuHashMap},
    programs::TracePoint,
};
use keeper_common::{NoiseTotal, SOFTIRQ_NAMES, maps, programs};
use serde::{Deserialize, Serialize};

use super::{
    sched::SenseError,
    tracefs::{Tracefs, TracefsError},
};

/// Where the noise programs read the IRQ number and the softirq vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoiseOffsets {
    pub irq: u32,
    pub vec: u32,
}

impl NoiseOffsets {
    /// From the `format` files of irq:irq_handler_exit and irq:softirq_exit.
    pub fn from_tracefs(tracefs: &Tracefs) -> Result<Self, TracefsError> {
        let irq = tracefs.format("irq", "irq_handler_exit")?;
        let softirq = tracefs.format("irq", "softirq_exit")?;
        Ok(Self {
            irq: irq.offset("irq", 4)?,
            vec: softirq.offset("vec", 4)?,
        })
    }
}

/// Loads and attaches the four noise programs; whether they run. A kernel that refuses them
/// is said once: the rest of the sensor works without.
pub fn attach(ebpf: &mut Ebpf, offsets: Option<&NoiseOffsets>) -> bool {
    if offsets.is_none() {
        return false;
    }
    for (name, event) in programs::NOISE {
        let attached = (|| -> Result<(), String> {
            let prog: &mut TracePoint = ebpf
                .program_mut(name)
                .ok_or("not in the object")?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            prog.load().map_err(|e| e.to_string())?;
            prog.attach("irq", event).map_err(|e| e.to_string())?;
            Ok(())
        })();
        if let Err(e) = attached {
            tracing::warn!(program = name, error = %e, "IRQ and softirq time on the trading cores is not measured");
            return false;
        }
    }
    true
}

/// One interrupt source's time on the trading cores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoiseCount {
    /// Net handler time (ns).
    pub ns: u64,
    pub count: u64,
    /// The longest handler run (ns).
    pub max_ns: u64,
}

impl NoiseCount {
    fn add(&mut self, t: &NoiseTotal) {
        self.ns += t.ns;
        self.count += t.count;
        self.max_ns = self.max_ns.max(t.max_ns);
    }

    /// The time and runs since `earlier` (the longest run stays the run's).
    pub fn since(&self, earlier: &NoiseCount) -> NoiseCount {
        NoiseCount {
            ns: self.ns.saturating_sub(earlier.ns),
            count: self.count.saturating_sub(earlier.count),
            max_ns: self.max_ns,
        }
    }
}

/// IRQ and softirq time on the trading cores since the sensor attached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noise {
    /// By IRQ number.
    pub irqs: BTreeMap<u32, NoiseCount>,
    /// By softirq vector name (`TIMER`, `NET_RX`, `RCU`...).
    pub softirqs: BTreeMap<String, NoiseCount>,
    /// The IRQs' names as /proc/interrupts gave them when read (`virtio1-req.0`, `ttyS0`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<u32, String>,
}

impl Noise {
    /// What happened since `earlier`.
    pub fn since(&self, earlier: &Noise) -> Noise {
        fn diff<K: Ord + Clone>(
            now: &BTreeMap<K, NoiseCount>,
            then: &BTreeMap<K, NoiseCount>,
        ) -> BTreeMap<K, NoiseCount> {
            now.iter()
                .map(|(k, c)| {
                    (
                        k.clone(),
                        c.since(&then.get(k).copied().unwrap_or_default()),
                    )
                })
                .filter(|(_, c)| c.count > 0)
                .collect()
        }
        Noise {
            irqs: diff(&self.irqs, &earlier.irqs),
            softirqs: diff(&self.softirqs, &earlier.softirqs),
            names: self.names.clone(),
        }
    }

    /// All of it (ns).
    pub fn total_ns(&self) -> u64 {
        self.irqs
            .values()
            .chain(self.softirqs.values())
            .map(|c| c.ns)
            .sum()
    }
}

/// The totals in the maps, summed over the CPUs (only trading cores count there), and the
/// IRQs' names.
pub fn read(ebpf: &Ebpf) -> Result<Noise, SenseError> {
    let mut noise = Noise::default();
    let name = maps::NOISE_IRQ;
    let err = |source| SenseError::Map { name, source };
    let map = ebpf.map(name).ok_or(SenseError::MissingMap(name))?;
    let irqs: PerCpuHashMap<&MapData, u32, NoiseTotal> = map.try_into().map_err(err)?;
    for (irq, per_cpu) in irqs.iter().filter_map(Result::ok) {
        let c = noise.irqs.entry(irq).or_default();
        per_cpu.iter().for_each(|t| c.add(t));
    }
    let name = maps::NOISE_SOFTIRQ;
    let err = |source| SenseError::Map { name, source };
    let map = ebpf.map(name).ok_or(SenseError::MissingMap(name))?;
    let softirqs: PerCpuArray<&MapData, NoiseTotal> = map.try_into().map_err(err)?;
    for (vec, vector) in SOFTIRQ_NAMES.iter().enumerate() {
        let per_cpu = softirqs.get(&(vec as u32), 0).map_err(err)?;
        let mut c = NoiseCount::default();
        per_cpu.iter().for_each(|t| c.add(t));
        if c.count > 0 {
            noise.softirqs.insert((*vector).to_string(), c);
        }
    }
    let mut names = crate::device::irq::names();
    names.retain(|irq, _| noise.irqs.contains_key(irq));
    noise.names = names;
    Ok(noise)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_the_difference_of_two_readouts() {
        let c = |ns, count| NoiseCount {
            ns,
            count,
            max_ns: 9,
        };
        let then = Noise {
            irqs: BTreeMap::from([(25, c(100, 2))]),
            softirqs: BTreeMap::from([("TIMER".into(), c(50, 1))]),
            ..Noise::default()
        };
        let now = Noise {
            irqs: BTreeMap::from([(25, c(400, 5)), (26, c(10, 1))]),
            softirqs: BTreeMap::from([("TIMER".into(), c(50, 1))]),
            ..Noise::default()
        };
        let w = now.since(&then);
        assert_eq!(w.irqs[&25], c(300, 3));
        assert_eq!(w.irqs[&26], c(10, 1));
        assert!(w.softirqs.is_empty(), "no TIMER run in the window");
        assert_eq!(w.total_ns(), 310);
    }
}
