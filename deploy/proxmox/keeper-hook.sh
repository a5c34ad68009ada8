#!/bin/sh
# Proxmox VE hookscript: tells the keeper when a VM starts or stops, so that it places the VM's
# workload (qemu.slice/<vmid>.scope) at once instead of at its next tick.
#
# Install:  cp keeper-hook.sh /var/lib/vz/snippets/ && chmod +x /var/lib/vz/snippets/keeper-hook.sh
#           qm set <vmid> --hookscript local:snippets/keeper-hook.sh
# Proxmox calls it as: keeper-hook.sh <vmid> <phase>   (pre-start, post-start, pre-stop, post-stop)
# It never blocks a VM: a keeper that is not running is logged and ignored.
set -u
vmid="${1:-}"
phase="${2:-}"
KEEPER="${KEEPER:-/usr/bin/keeper}"
SOCKET="${KEEPER_SOCKET:-/run/keeper/keeper.sock}"

case "$vmid" in
  ''|*[!0-9]*) echo "keeper-hook: usage: $0 VMID PHASE (got vmid '$vmid')" >&2; exit 0 ;;
esac

case "$phase" in
  post-start|post-stop)
    if "$KEEPER" reload --socket "$SOCKET" >/dev/null 2>&1; then
      echo "keeper-hook: VM $vmid $phase: keeper re-placed the workloads"
    else
      echo "keeper-hook: VM $vmid $phase: keeper not reachable at $SOCKET (ignored)" >&2
    fi
    ;;
  pre-start|pre-stop) ;;
  *) echo "keeper-hook: VM $vmid: unknown phase '$phase' (ignored)" >&2 ;;
esac
exit 0
