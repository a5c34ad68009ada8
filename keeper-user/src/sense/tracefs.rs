//! tracefs: where it is mounted (mounting it when nobody has), and the field offsets of
//! tracepoints read from `events/<category>/<name>/format`.
//!
//! The eBPF programs get these offsets as globals at load time instead of relying on CO-RE, so
//! one object loads on every kernel whose tracepoints carry the fields.

use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {path} failed: {source} (needs root: `mount -t tracefs tracefs {path}`)"
    )]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: tracepoint format has no field `{field}` (this kernel's {event} lacks it)")]
    MissingField {
        path: PathBuf,
        event: String,
        field: String,
    },
    #[error("{path}: field `{field}` is {size} bytes, the keeper expects {expected}")]
    FieldSize {
        path: PathBuf,
        field: String,
        size: usize,
        expected: usize,
    },
}

/// One `field:` line of a format file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// The parsed format of one tracepoint.
#[derive(Clone, Debug)]
pub struct Format {
    pub path: PathBuf,
    pub event: String,
    pub fields: Vec<Field>,
}

impl Format {
    /// Parses the text of a format file.
    pub fn parse(path: &Path, event: &str, text: &str) -> Format {
        let fields = text
            .lines()
            .filter_map(|line| {
                let line = line.trim();
                let decl = line.strip_prefix("field:")?;
                let mut parts = decl.split(';').map(str::trim);
                let decl = parts.next()?;
                let mut offset = None;
                let mut size = None;
                for part in parts {
                    if let Some(v) = part.strip_prefix("offset:") {
                        offset = v.parse().ok();
                    } else if let Some(v) = part.strip_prefix("size:") {
                        size = v.parse().ok();
                    }
                }
                // `char prev_comm[16]` → `prev_comm`; `pid_t pid` → `pid`.
                let name = decl.rsplit(' ').next()?;
                let name = name.split('[').next()?.to_string();
                Some(Field {
                    name,
                    offset: offset?,
                    size: size?,
                })
            })
            .collect();
        Format {
            path: path.to_path_buf(),
            event: event.to_string(),
            fields,
        }
    }

    /// Offset of a field that must have the given size.
    pub fn offset(&self, field: &str, expected_size: usize) -> Result<u32, TracefsError> {
        let f = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| TracefsError::MissingField {
                path: self.path.clone(),
                event: self.event.clone(),
                field: field.to_string(),
            })?;
        if f.size != expected_size {
            return Err(TracefsError::FieldSize {
                path: self.path.clone(),
                field: field.to_string(),
                size: f.size,
                expected: expected_size,
            });
        }
        Ok(f.offset as u32)
    }
}

/// A tracefs mount.
#[derive(Clone, Debug)]
pub struct Tracefs {
    root: PathBuf,
}

const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

impl Tracefs {
    /// Uses a tracefs rooted at `root` (tests point this at a fake tree).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Finds the mounted tracefs, mounting it at /sys/kernel/tracing when nobody has.
    pub fn find_or_mount() -> Result<Self, TracefsError> {
        if let Some(root) = CANDIDATES
            .iter()
            .map(Path::new)
            .find(|p| p.join("events").is_dir())
        {
            return Ok(Self::at(root));
        }
        let path = PathBuf::from(CANDIDATES[0]);
        let target = CString::new(CANDIDATES[0]).expect("static path has no NUL");
        let fstype = CString::new("tracefs").expect("static string has no NUL");
        // SAFETY: all pointers are valid NUL-terminated strings for the duration of the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(TracefsError::Mount {
                path,
                source: io::Error::last_os_error(),
            });
        }
        tracing::info!(path = %path.display(), "mounted tracefs");
        Ok(Self::at(path))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads and parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let path = self
            .root
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&path, &format!("{category}:{name}"), &text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = "name: sched_switch\nID: 372\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;\n\
\nprint fmt: \"prev_comm=%s\", REC->prev_comm\n";

    #[test]
    fn reads_offsets_and_sizes() {
        let f = Format::parse(Path::new("f"), "sched:sched_switch", SWITCH);
        assert_eq!(f.offset("prev_comm", 16).unwrap(), 8);
        assert_eq!(f.offset("prev_pid", 4).unwrap(), 24);
        assert_eq!(f.offset("prev_state", 8).unwrap(), 32);
    }

    #[test]
    fn missing_or_resized_fields_are_clear_errors() {
        let f = Format::parse(Path::new("/t/format"), "sched:sched_switch", SWITCH);
        let e = f.offset("next_pid", 4).unwrap_err().to_string();
        assert_eq!(
            e,
            "/t/format: tracepoint format has no field `next_pid` (this kernel's sched:sched_switch lacks it)"
        );
        let e = f.offset("prev_state", 4).unwrap_err().to_string();
        assert!(
            e.contains("`prev_state` is 8 bytes, the keeper expects 4"),
            "{e}"
        );
    }
}
