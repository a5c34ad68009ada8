//! OOM kills by workload, kept across restarts in the state directory (`oom-kills.jsonl`, one
//! JSON object a line) over a rolling week: what the sizing advice counts (the seed: "if a
//! light-browser agent crashes more than once a week for lack of RAM, move it up a size or
//! isolate it strictly"). A line that cannot be read is skipped and named, never a reason not
//! to start.

use std::{
    fs::OpenOptions,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The window the advice counts over.
pub const WEEK: Duration = Duration::from_secs(7 * 86400);
/// Kills kept at most (the oldest go first): a crash loop does not grow the file forever.
const MAX_KILLS: usize = 10_000;

/// One OOM kill of a workload's task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kill {
    pub at: Timestamp,
    pub workload: String,
    pub comm: String,
    pub cgroup: String,
}

/// The kills of the last week, and the file they are kept in.
#[derive(Debug, Default)]
pub struct OomHistory {
    /// `None`: not kept (a dry run keeps nothing on disk; the kills of this run still count).
    path: Option<PathBuf>,
    kills: Vec<Kill>,
}

impl OomHistory {
    /// Reads `path` (a missing file is an empty history); kills older than a week are left out,
    /// and the file is rewritten without them. `keep`: new kills are appended to it.
    pub fn open(path: &Path, keep: bool, now: Timestamp) -> OomHistory {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "OOM kill history unreadable: counting from now");
                String::new()
            }
        };
        let mut kills = Vec::new();
        let mut dropped = 0;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<Kill>(line) {
                Ok(k) if within_week(&k, now) => kills.push(k),
                Ok(_) => dropped += 1,
                Err(e) => {
                    dropped += 1;
                    tracing::warn!(path = %path.display(), line = i + 1, error = %e, "OOM kill history: a line that cannot be read is skipped");
                }
            }
        }
        let excess = kills.len().saturating_sub(MAX_KILLS);
        kills.drain(..excess);
        let h = OomHistory {
            path: keep.then(|| path.to_path_buf()),
            kills,
        };
        if keep && dropped + excess > 0 {
            h.rewrite();
        }
        h
    }

    /// Counts a kill, and appends it to the file when the history is kept.
    pub fn record(&mut self, kill: Kill) {
        if let Some(path) = &self.path {
            let line = serde_json::to_string(&kill).map(|l| l + "\n");
            let written = line.map_err(std::io::Error::other).and_then(|l| {
                let mut f = OpenOptions::new().create(true).append(true).open(path)?;
                f.write_all(l.as_bytes())
            });
            if let Err(e) = written {
                tracing::warn!(path = %path.display(), error = %e, "OOM kill not kept across restarts");
            }
        }
        if self.kills.len() == MAX_KILLS {
            self.kills.remove(0);
        }
        self.kills.push(kill);
    }

    /// The kills of the week before `now`.
    pub fn last_week(&self, now: Timestamp) -> impl Iterator<Item = &Kill> {
        self.kills.iter().filter(move |k| within_week(k, now))
    }

    /// The file again, without what was left out (written beside it, then renamed).
    fn rewrite(&self) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("jsonl.tmp");
        let text: String = (self.kills.iter())
            .filter_map(|k| serde_json::to_string(k).ok())
            .map(|l| l + "\n")
            .collect();
        if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path)) {
            tracing::warn!(path = %path.display(), error = %e, "OOM kill history not pruned");
        }
    }
}

fn within_week(k: &Kill, now: Timestamp) -> bool {
    let age = now.duration_since(k.at);
    age.as_secs_f64() <= WEEK.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kill(at: Timestamp, w: &str) -> Kill {
        Kill {
            at,
            workload: w.into(),
            comm: "chrome".into(),
            cgroup: format!("lxc/{w}"),
        }
    }

    #[test]
    fn kills_are_kept_across_restarts_for_a_week_and_bad_lines_skipped() {
        let dir = std::env::temp_dir().join(format!("keeper-oom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("oom-kills.jsonl");
        let now: Timestamp = "2026-03-09T12:00:00Z".parse().unwrap();
        let days = |d: i64| now - jiff::SignedDuration::from_hours(24 * d);
        // An earlier run: one kill 8 days ago (out of the week), one 2 days ago.
        let mut h = OomHistory::open(&path, true, days(8));
        h.record(kill(days(8), "sentinel"));
        h.record(kill(days(2), "sentinel"));
        drop(h);
        // A byte gone bad in between: that line is skipped, the others count.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"at\": 12, oops\n");
        std::fs::write(&path, text).unwrap();
        // The next start: the week's kill is back, the old one and the bad line are dropped
        // from the file too.
        let mut h = OomHistory::open(&path, true, now);
        assert_eq!(h.last_week(now).count(), 1);
        h.record(kill(now, "sentinel"));
        let again = OomHistory::open(&path, true, now);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            again.last_week(now).cloned().collect::<Vec<_>>(),
            [kill(days(2), "sentinel"), kill(now, "sentinel")]
        );
    }

    #[test]
    fn a_dry_run_counts_its_kills_but_writes_nothing() {
        let path = std::env::temp_dir().join(format!("keeper-oom-dry-{}", std::process::id()));
        let now = Timestamp::now();
        let mut h = OomHistory::open(&path, false, now);
        h.record(kill(now, "muse"));
        assert_eq!(h.last_week(now).count(), 1);
        assert!(!path.exists());
    }
}
