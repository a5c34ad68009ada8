//! `cargo xtask vm-test` (being written).
use std::path::Path;

pub fn run(_root: &Path) -> anyhow::Result<()> {
    anyhow::bail!("vm-test is not written yet")
}
