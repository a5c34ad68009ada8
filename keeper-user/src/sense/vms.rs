//! The VMs on this host, Proxmox's way: one QMP socket per VM, `<qmp-dir>/<vmid>.qmp`
//! (`/var/run/qemu-server` by default), and its cgroup `qemu.slice/<vmid>.scope`.

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use crate::device::qmp::{DEFAULT_QMP_DIR, socket_of};
use crate::device::qmp::{Qmp, QmpError};

/// One VM as its QMP socket describes it. A VM whose socket does not answer is listed with
/// the error, not dropped.
#[derive(Clone, Debug, Serialize)]
pub struct Vm {
    pub vmid: u32,
    pub socket: PathBuf,
    /// The cgroup Proxmox runs it in.
    pub cgroup: String,
    pub state: Option<String>,
    pub balloon_actual_bytes: Option<u64>,
    pub max_memory_bytes: Option<u64>,
    pub error: Option<String>,
}

/// Every `<vmid>.qmp` under `dir`, by vmid. A missing directory means no VMs.
pub fn discover(dir: &Path) -> std::io::Result<Vec<u32>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let mut ids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            name.to_str()?.strip_suffix(".qmp")?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    Ok(ids)
}

/// Asks one VM for its state, balloon and maximum memory (one short QMP session).
pub fn inspect(dir: &Path, vmid: u32) -> Vm {
    let socket = socket_of(dir, vmid);
    let mut vm = Vm {
        vmid,
        socket: socket.clone(),
        cgroup: format!("qemu.slice/{vmid}.scope"),
        state: None,
        balloon_actual_bytes: None,
        max_memory_bytes: None,
        error: None,
    };
    let read = || -> Result<(String, Option<u64>, u64), QmpError> {
        let mut q = Qmp::connect(&socket)?;
        let state = q.status()?;
        // A VM without a balloon device answers query-balloon with an error: no balloon.
        let actual = match q.balloon_actual() {
            Ok(a) => Some(a),
            Err(QmpError::Refused { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok((state, actual, q.max_memory()?))
    };
    match read() {
        Ok((state, actual, max)) => {
            vm.state = Some(state);
            vm.balloon_actual_bytes = actual;
            vm.max_memory_bytes = Some(max);
        }
        Err(e) => vm.error = Some(e.to_string()),
    }
    vm
}
