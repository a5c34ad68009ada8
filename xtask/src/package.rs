//! `cargo xtask package`: a Debian package with the keeper, its systemd unit, the default
//! policy, the alerting rules and dashboard, shell completions, man pages and the docs, built with dpkg-deb
//! (no cargo-deb needed).

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{cargo, run};

/// Before the files go (`remove`, and so `purge`): the keeper stopped (its undo) and disabled
/// (no `multi-user.target.wants` link left behind).
const PRERM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop keeper || true
    systemctl disable keeper >/dev/null 2>&1 || true
fi
";

/// After: systemd told; at `purge`, the state and runtime folders go, unless the journal still
/// names changes (a keeper that was killed and never started again): those are kept, and said,
/// so that a keeper started once more can undo them.
const POSTRM: &str = "#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
if [ \"$1\" = purge ]; then
    rm -rf /run/keeper
    if [ -s /var/lib/keeper/journal.jsonl ]; then
        echo \"keeper: /var/lib/keeper/journal.jsonl still names changes of a keeper that did not stop: kept (install and start the keeper once to undo them)\" >&2
    else
        rm -rf /var/lib/keeper
    fi
    rmdir /etc/keeper 2>/dev/null || true
    groupdel keeper 2>/dev/null || true
fi
";

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
    // Observes only until it is edited (or replaced by what `keeper init` writes): the Hive's
    // cores are not this host's.
    copy("policies/observe.yaml", "etc/keeper/policy.yaml", 0o644)?;
    // The Hive, the keeper inside the GPU VM (docs/hive.md) and the one-machine layout, as
    // examples.
    for example in ["hive.yaml", "brain-vm.yaml", "one-host.yaml", "demo.yaml"] {
        copy(
            &format!("policies/{example}"),
            &format!("usr/share/keeper/policies/{example}"),
            0o644,
        )?;
    }
    copy(
        "deploy/proxmox/keeper-hook.sh",
        "usr/share/keeper/keeper-hook.sh",
        0o755,
    )?;
    copy(
        "deploy/prometheus/keeper-rules.yaml",
        "usr/share/keeper/prometheus/keeper-rules.yaml",
        0o644,
    )?;
    copy(
        "deploy/grafana/keeper.json",
        "usr/share/keeper/grafana/keeper.json",
        0o644,
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
    shell_completions_and_man_pages(root, &stage)?;
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
        "#!/bin/sh\nset -e\n# The control socket's group (the unit's --allow-group keeper).\ngetent group keeper >/dev/null || groupadd --system keeper\nif [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi\n",
    )?;
    std::fs::write(debian.join("prerm"), PRERM)?;
    std::fs::write(debian.join("postrm"), POSTRM)?;
    for script in ["postinst", "prerm", "postrm"] {
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

/// Completions for bash, zsh and fish and the man pages, generated by the built keeper from
/// its own command line (clap_complete, clap_mangen), where each shell and man look for them.
fn shell_completions_and_man_pages(root: &Path, stage: &Path) -> anyhow::Result<()> {
    let keeper = root.join("target/release/keeper");
    for (shell, to) in [
        ("bash", "usr/share/bash-completion/completions/keeper"),
        ("zsh", "usr/share/zsh/vendor-completions/_keeper"),
        ("fish", "usr/share/fish/vendor_completions.d/keeper.fish"),
    ] {
        let out = std::process::Command::new(&keeper)
            .args(["completions", shell])
            .output()
            .context("running keeper completions")?;
        anyhow::ensure!(out.status.success(), "keeper completions {shell} failed");
        let dest = stage.join(to);
        std::fs::create_dir_all(dest.parent().context("path")?)?;
        std::fs::write(&dest, out.stdout)?;
    }
    let man = stage.join("usr/share/man/man1");
    run(std::process::Command::new(&keeper)
        .arg("man")
        .arg("--out")
        .arg(&man))?;
    for page in std::fs::read_dir(&man)? {
        // Debian's policy: man pages gzip'd, at the highest compression, without a timestamp.
        run(std::process::Command::new("gzip")
            .args(["-9n"])
            .arg(page?.path()))?;
    }
    Ok(())
}
