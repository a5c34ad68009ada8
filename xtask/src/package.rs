//! `cargo xtask package`: a Debian package with the keeper, its systemd unit, the default
//! policy and the docs, built with dpkg-deb (no cargo-deb needed).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{cargo, run};

pub fn deb(root: &Path) -> anyhow::Result<PathBuf> {
    run(cargo().args(["build", "--release", "-p", "keeper-user", "--bin", "keeper"]))?;
    let version = env!("CARGO_PKG_VERSION");
    let stage = root.join("target/deb/stage");
    let _ = std::fs::remove_dir_all(&stage);
    let copy = |from: &str, to: &str, mode: u32| -> anyhow::Result<()> {
        let dest = stage.join(to);
        std::fs::create_dir_all(dest.parent().context("path")?)?;
        std::fs::copy(root.join(from), &dest).with_context(|| format!("copying {from}"))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    copy("target/release/keeper", "usr/bin/keeper", 0o755)?;
    copy(
        "deploy/systemd/keeper.service",
        "usr/lib/systemd/system/keeper.service",
        0o644,
    )?;
    copy("policies/hive.yaml", "etc/keeper/policy.yaml", 0o644)?;
    copy(
        "deploy/proxmox/keeper-hook.sh",
        "usr/share/keeper/keeper-hook.sh",
        0o755,
    )?;
    for doc in [
        "README.md",
        "docs/run.md",
        "docs/policy.md",
        "docs/report.md",
        "docs/operations.md",
    ] {
        let name = Path::new(doc)
            .file_name()
            .context("name")?
            .to_string_lossy()
            .into_owned();
        copy(doc, &format!("usr/share/doc/keeper/{name}"), 0o644)?;
    }
    let debian = stage.join("DEBIAN");
    std::fs::create_dir_all(&debian)?;
    std::fs::write(
        debian.join("control"),
        format!(
            "Package: keeper\nVersion: {version}\nArchitecture: amd64\nMaintainer: The Keeper developers <keeper@localhost>\n\
             Depends: libc6 (>= 2.34)\nSection: admin\nPriority: optional\n\
             Description: eBPF resource enforcer for one Proxmox host\n \
             Holds the trading cores clear, freezes and throttles lower-ranked workloads by a YAML\n \
             policy, and reports the trading workload's latency.\n"
        ),
    )?;
    // The policy is configuration: an upgrade keeps the operator's edits.
    std::fs::write(debian.join("conffiles"), "/etc/keeper/policy.yaml\n")?;
    std::fs::write(
        debian.join("postinst"),
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
    )?;
    std::fs::write(
        debian.join("prerm"),
        "#!/bin/sh\nset -e\nif [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then systemctl stop keeper || true; fi\n",
    )?;
    for script in ["postinst", "prerm"] {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(debian.join(script), std::fs::Permissions::from_mode(0o755))?;
    }
    let out = root.join(format!("target/deb/keeper_{version}_amd64.deb"));
    run(std::process::Command::new("dpkg-deb")
        .args(["--build", "--root-owner-group"])
        .arg(&stage)
        .arg(&out))?;
    Ok(out)
}
