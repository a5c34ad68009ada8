//! `cargo xtask bench probe`: cost per event of the keeper's attached programs, read from the kernel's BPF stats
//! (`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt) under a context-switch storm
//! (`stress-ng --switch`), beside bpftrace running an equivalent runqlat script, and the storm's
//! throughput with and without each tracer attached. Medians of several repetitions, one run.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use super::{ChildGuard, median};
use crate::cargo;

/// bpftrace's runqlat, reduced to what the keeper measures (wakeup and preemption → on CPU).
const RUNQLAT_BT: &str = r#"
tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @qtime[args->pid] = nsecs; }
tracepoint:sched:sched_switch {
  if (args->prev_state == 0 || args->prev_state == 256) { @qtime[args->prev_pid] = nsecs; }
  $ns = @qtime[args->next_pid];
  if ($ns) { @usecs = hist((nsecs - $ns) / 1000); }
  delete(@qtime[args->next_pid]);
}
"#;

struct Condition {
    label: &'static str,
    /// ns per program run, per repetition.
    ns_per_event: Vec<f64>,
    runs_per_sec: Vec<f64>,
    ops_per_sec: Vec<f64>,
}

pub fn probe(root: &Path, reps: usize, secs: u64) -> anyhow::Result<()> {
    crate::run(cargo().args(["build", "--release", "-p", "keeper-user", "--bin", "keeper"]))?;
    let keeper = root.join("target/release/keeper");
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")?;
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", "1")?;
    let result = (|| -> anyhow::Result<Vec<Condition>> {
        let mut out = Vec::new();
        out.push(measure("no tracer", reps, secs, None, |_| false)?);
        for (label, cpus) in [
            ("keeper, trading core CPU 1", "1"),
            ("keeper, CPUs 0-1", "0-1"),
        ] {
            let before = prog_ids()?;
            let child = Command::new(&keeper)
                .args(["watch", "--cpus", cpus, "--format", "json"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting keeper watch")?;
            out.push(measure(label, reps, secs, Some(child), |p| {
                !before.contains(&p.id) && p.name.starts_with("keeper_")
            })?);
        }
        // bpftool here cannot name a program's process: the tracer's programs are the new ones.
        let before = prog_ids()?;
        let child = Command::new("bpftrace")
            .args(["-e", RUNQLAT_BT])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting bpftrace")?;
        out.push(measure("bpftrace runqlat", reps, secs, Some(child), |p| {
            !before.contains(&p.id) && p.kind == "tracepoint"
        })?);
        Ok(out)
    })();
    std::fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_before.trim())?;
    let conditions = result?;
    print_table(&conditions, reps, secs);
    Ok(())
}

struct Prog {
    id: u64,
    name: String,
    kind: String,
    run_time_ns: u64,
    run_cnt: u64,
}

fn progs() -> anyhow::Result<Vec<Prog>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "-j"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool json")?;
    Ok(v.as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|p| Prog {
            id: p["id"].as_u64().unwrap_or(0),
            name: p["name"].as_str().unwrap_or_default().to_string(),
            kind: p["type"].as_str().unwrap_or_default().to_string(),
            run_time_ns: p["run_time_ns"].as_u64().unwrap_or(0),
            run_cnt: p["run_cnt"].as_u64().unwrap_or(0),
        })
        .collect())
}

fn prog_ids() -> anyhow::Result<std::collections::HashSet<u64>> {
    Ok(progs()?.into_iter().map(|p| p.id).collect())
}

/// Sums (run_time_ns, run_cnt) over the programs `pick` selects.
fn totals(pick: &impl Fn(&Prog) -> bool) -> anyhow::Result<(u64, u64, usize)> {
    let ps: Vec<Prog> = progs()?.into_iter().filter(|p| pick(p)).collect();
    Ok((
        ps.iter().map(|p| p.run_time_ns).sum(),
        ps.iter().map(|p| p.run_cnt).sum(),
        ps.len(),
    ))
}

fn measure(
    label: &'static str,
    reps: usize,
    secs: u64,
    tracer: Option<Child>,
    pick: impl Fn(&Prog) -> bool,
) -> anyhow::Result<Condition> {
    let mut guard = ChildGuard(tracer);
    if guard.0.is_some() {
        let start = Instant::now();
        while totals(&pick)?.2 < 2 {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("{label}: its programs did not show up in `bpftool prog show`");
            }
            if let Some(child) = guard.0.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("{label}: tracer exited early ({status})");
            }
            sleep(Duration::from_millis(200));
        }
        sleep(Duration::from_secs(1));
    }
    let mut c = Condition {
        label,
        ns_per_event: vec![],
        runs_per_sec: vec![],
        ops_per_sec: vec![],
    };
    for _ in 0..reps {
        let (t0, n0, _) = totals(&pick)?;
        let ops = storm(secs)?;
        let (t1, n1, _) = totals(&pick)?;
        c.ops_per_sec.push(ops);
        if n1 > n0 {
            c.ns_per_event.push((t1 - t0) as f64 / (n1 - n0) as f64);
            c.runs_per_sec.push((n1 - n0) as f64 / secs as f64);
        }
    }
    drop(guard);
    eprintln!("bench: {label} done");
    Ok(c)
}

/// One context-switch storm; returns stress-ng's bogo ops per second (real time).
fn storm(secs: u64) -> anyhow::Result<f64> {
    let yaml = std::env::temp_dir().join(format!("keeper-bench-{}.yaml", std::process::id()));
    let out = Command::new("stress-ng")
        .args(["--switch", "2", "--metrics-brief", "--timeout"])
        .arg(format!("{secs}s"))
        .arg("--yaml")
        .arg(&yaml)
        .output()
        .context("running stress-ng")?;
    if !out.status.success() {
        bail!("stress-ng failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = std::fs::read_to_string(&yaml)?;
    let _ = std::fs::remove_file(&yaml);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("bogo-ops-per-second-real-time:"))
        .and_then(|v| v.trim().parse().ok())
        .context("stress-ng yaml has no bogo-ops-per-second-real-time")
}

fn print_table(conditions: &[Condition], reps: usize, secs: u64) {
    let base = conditions
        .first()
        .and_then(|c| median(&c.ops_per_sec))
        .unwrap_or(f64::NAN);
    let bt = conditions
        .iter()
        .find(|c| c.label.starts_with("bpftrace"))
        .and_then(|c| median(&c.ns_per_event));
    let mut rows: BTreeMap<usize, String> = BTreeMap::new();
    for (i, c) in conditions.iter().enumerate() {
        let ns = median(&c.ns_per_event);
        let ops = median(&c.ops_per_sec).unwrap_or(f64::NAN);
        rows.insert(
            i,
            format!(
                "| {} | {} | {} | {} | {:.0} | {:+.1} % |",
                c.label,
                ns.map_or("-".into(), |v| format!("{v:.0}")),
                match (ns, bt) {
                    (Some(a), Some(b)) if !c.label.starts_with("bpftrace") =>
                        format!("{:.2}×", a / b),
                    _ => "-".into(),
                },
                median(&c.runs_per_sec).map_or("-".into(), |v| format!("{v:.0}")),
                ops,
                100.0 * (ops - base) / base,
            ),
        );
    }
    println!(
        "\nProbe cost under `stress-ng --switch 2` ({reps} × {secs} s per condition, medians)\n"
    );
    println!(
        "| condition | ns per program run | vs bpftrace | program runs/s | storm ops/s | throughput vs no tracer |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows.values() {
        println!("{r}");
    }
}
