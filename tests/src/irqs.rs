//! Interrupt affinities as the tests see them, and a guard that puts every line back where it
//! was allowed when the test started, even when it fails.

use std::collections::BTreeMap;

/// `/proc/irq/<irq>/smp_affinity_list` (empty if it cannot be read).
pub fn irq_affinity(irq: u32) -> String {
    std::fs::read_to_string(format!("/proc/irq/{irq}/smp_affinity_list"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Whether a CPU list (`0-1`, `1,3`) names CPU 1, the tests' trading core.
pub fn allows_cpu1(list: &str) -> bool {
    list.split(',').any(|part| {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        matches!((a.parse::<u32>(), b.parse::<u32>()), (Ok(a), Ok(b)) if a <= 1 && 1 <= b)
    })
}

/// Every IRQ's affinity at the start; written back on drop where it differs.
pub struct SavedIrqs(pub BTreeMap<u32, String>);

impl SavedIrqs {
    pub fn now() -> SavedIrqs {
        let irqs = std::fs::read_dir("/proc/irq")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .map(|irq| (irq, irq_affinity(irq)))
                    .filter(|(_, a)| !a.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        SavedIrqs(irqs)
    }

    /// Lines not where they were at the start: `IRQ n on CPUs X (was Y)`.
    pub fn moved(&self) -> Vec<String> {
        self.0
            .iter()
            .filter_map(|(irq, was)| {
                let now = irq_affinity(*irq);
                (now != *was && !now.is_empty())
                    .then(|| format!("IRQ {irq} on CPUs {now} (was {was})"))
            })
            .collect()
    }
}

impl Drop for SavedIrqs {
    fn drop(&mut self) {
        for (irq, a) in &self.0 {
            if irq_affinity(*irq) != *a {
                let _ = std::fs::write(format!("/proc/irq/{irq}/smp_affinity_list"), a);
            }
        }
    }
}
