//! The kernel's own type information (BTF, `/sys/kernel/btf/vmlinux`): where a field of a
//! kernel struct lies, so the eBPF programs read it at an offset handed in as a global, the way
//! tracepoint fields are (docs/decisions/0012-btf-offsets.md). Only what that needs is parsed:
//! the header, the string section and the type records, walked to a struct's member.

use std::path::{Path, PathBuf};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not BTF ({what})")]
    Malformed { path: PathBuf, what: String },
    #[error("{path}: no `struct {ty}` with a member `{member}`")]
    NoMember {
        path: PathBuf,
        ty: String,
        member: String,
    },
}

/// A parsed BTF blob (little-endian, as on every host the keeper runs on).
pub struct Btf {
    path: PathBuf,
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn kernel() -> Result<Self, BtfError> {
        Self::read(Path::new(VMLINUX))
    }

    pub fn read(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &data)
    }

    /// Splits the blob into its type and string sections (header: magic, version, flags,
    /// hdr_len, type_off, type_len, str_off, str_len).
    pub fn parse(path: &Path, data: &[u8]) -> Result<Self, BtfError> {
        let bad = |what: &str| BtfError::Malformed {
            path: path.into(),
            what: what.into(),
        };
        let u32_at = |o: usize| {
            data.get(o..o + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        };
        if data.get(0..2) != Some(&MAGIC.to_le_bytes()[..]) {
            return Err(bad("bad magic"));
        }
        let (Some(hdr), Some(type_off), Some(type_len), Some(str_off), Some(str_len)) =
            (u32_at(4), u32_at(8), u32_at(12), u32_at(16), u32_at(20))
        else {
            return Err(bad("short header"));
        };
        let section = |off: usize, len: usize, what: &str| {
            data.get(hdr + off..hdr + off + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| bad(what))
        };
        Ok(Self {
            path: path.into(),
            types: section(type_off, type_len, "type section out of bounds")?,
            strings: section(str_off, str_len, "string section out of bounds")?,
        })
    }

    /// Byte offset of `member` in `struct ty` (a direct member, not a bitfield).
    pub fn member_offset(&self, ty: &str, member: &str) -> Result<u32, BtfError> {
        let mut at = 0;
        while at + 12 <= self.types.len() {
            let (name, info) = (self.u32(at), self.u32(at + 4));
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let members = at + 12;
            if kind == KIND_STRUCT && self.string(name) == Some(ty) {
                for m in 0..vlen {
                    let rec = members + m * 12;
                    if self.string(self.u32(rec)) == Some(member) {
                        let bits = self.u32(rec + 8);
                        // kind_flag: the high 8 bits are a bitfield size.
                        let bits = if info >> 31 == 1 {
                            bits & 0xff_ffff
                        } else {
                            bits
                        };
                        return Ok(bits / 8);
                    }
                }
            }
            at = members + extra_len(kind, vlen);
        }
        Err(BtfError::NoMember {
            path: self.path.clone(),
            ty: ty.into(),
            member: member.into(),
        })
    }

    fn u32(&self, at: usize) -> u32 {
        self.types
            .get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&self, off: u32) -> Option<&str> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|b| *b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }
}

/// Where the programs read a task's fields (byte offsets from the kernel's BTF; 0: unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.flags` (`PF_KTHREAD`): kernel threads told apart in the kernel.
    pub flags: u32,
    /// The incoming task of a switch, for `keeper_arrive`: `task_struct.pid`, `.comm`,
    /// `.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn`, `kernfs_node.id`; `.tgid` tells the
    /// keeper's own eviction thread apart.
    pub pid: u32,
    pub tgid: u32,
    pub comm: u32,
    pub cgroups: u32,
    /// `task_struct.start_boottime`: who the newcomer is (its start time, as /proc says it).
    pub start_boottime: u32,
    /// `task_struct.cpus_mask`: the newcomer's CPUs, journaled by its eviction without a
    /// `sched_getaffinity` first (0: unknown; the eviction asks the kernel).
    pub cpus_mask: u32,
    pub dfl_cgrp: u32,
    pub kn: u32,
    pub kn_id: u32,
}

impl TaskOffsets {
    /// Reads the running kernel's offsets. What is missing is said once and left 0: without
    /// `flags`, kernel threads are told apart in userspace only; without the others,
    /// arrivals come from the classic tracepoint (no cgroup id: userspace reads /proc).
    pub fn kernel() -> Self {
        let btf = match Btf::kernel() {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no kernel BTF: kernel threads on the trading cores are told apart in userspace only (their time counts as intruders'), and a newcomer's cgroup is read from /proc before its eviction");
                return Self::default();
            }
        };
        let flags = btf.member_offset("task_struct", "flags").unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no task_struct.flags offset: kernel threads on the trading cores are told apart in userspace only, and their time counts as intruders'");
            0
        });
        let arrival = [
            ("task_struct", "pid"),
            ("task_struct", "tgid"),
            ("task_struct", "comm"),
            ("task_struct", "cgroups"),
            ("task_struct", "start_boottime"),
            ("css_set", "dfl_cgrp"),
            ("cgroup", "kn"),
            ("kernfs_node", "id"),
        ]
        .map(|(ty, member)| btf.member_offset(ty, member));
        match arrival {
            [
                Ok(pid),
                Ok(tgid),
                Ok(comm),
                Ok(cgroups),
                Ok(start_boottime),
                Ok(dfl_cgrp),
                Ok(kn),
                Ok(kn_id),
            ] if flags != 0 => Self {
                flags,
                pid,
                tgid,
                comm,
                cgroups,
                start_boottime,
                cpus_mask: btf.member_offset("task_struct", "cpus_mask").unwrap_or_else(|e| {
                    tracing::info!(error = %e, "no task_struct.cpus_mask offset: an eviction asks the kernel for the newcomer's CPUs before its move");
                    0
                }),
                dfl_cgrp,
                kn,
                kn_id,
            },
            other => {
                let missing = other.into_iter().find_map(Result::err);
                tracing::warn!(error = ?missing.map(|e| e.to_string()), "arrivals on the trading cores are read from the classic tracepoint: a newcomer's cgroup is read from /proc before its eviction");
                Self {
                    flags,
                    ..Self::default()
                }
            }
        }
    }

    /// Whether `keeper_arrive` can read an incoming task (every offset known).
    pub fn arrivals(&self) -> bool {
        self.flags != 0 && self.pid != 0 && self.cgroups != 0 && self.start_boottime != 0
    }
}

/// Bytes that follow a type record's 12-byte header, by kind (include/uapi/linux/btf.h).
fn extra_len(kind: u32, vlen: usize) -> usize {
    match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        _ => 0,                       // PTR, FWD, TYPEDEF, qualifiers, FUNC, FLOAT, TYPE_TAG
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-type BTF blob: `int` and `struct task_struct { int pad; int flags; }`.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0task_struct\0pad\0flags\0".to_vec();
        let mut types = Vec::new();
        let mut put = |v: u32| types.extend_from_slice(&v.to_le_bytes());
        // [1] INT "int" size 4, bits 32
        put(1);
        put(1 << 24);
        put(4);
        put(32);
        // [2] STRUCT "task_struct" size 8, 2 members
        put(5);
        put((4 << 24) | 2);
        put(8);
        for (name, bit_off) in [(17, 0), (21, 32)] {
            put(name);
            put(1);
            put(bit_off);
        }
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for v in [
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn finds_a_member_offset() {
        let btf = Btf::parse(Path::new("test"), &blob()).unwrap();
        assert_eq!(btf.member_offset("task_struct", "flags").unwrap(), 4);
        let err = btf.member_offset("task_struct", "mm").unwrap_err();
        assert_eq!(
            err.to_string(),
            "test: no `struct task_struct` with a member `mm`"
        );
    }

    #[test]
    fn junk_is_an_error_not_a_panic() {
        for data in [&b""[..], b"\x9f\xeb\x01\x00", &[0xff; 64]] {
            assert!(Btf::parse(Path::new("junk"), data).is_err());
        }
        let mut cut = blob();
        cut.truncate(40);
        assert!(Btf::parse(Path::new("cut"), &cut).is_err());
    }

    #[test]
    fn the_running_kernel_has_task_struct_flags() {
        let Ok(btf) = Btf::kernel() else {
            return; // no BTF on this kernel: the sensor says so and falls back
        };
        let off = btf.member_offset("task_struct", "flags").unwrap();
        assert!(off > 0 && off < 256, "{off}");
    }
}
