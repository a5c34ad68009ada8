#!/bin/sh
# The guest half of `cargo xtask vm-test`'s second boot: Debian trixie's 6.12 cloud kernel (the
# keeper inside the GPU VM, a remote cpuset partition for a VM below qemu.slice), and an
# emulated i6300esb whose action is a reset (QEMU runs with -no-reboot, so the reset ends
# QEMU and the host side times it and reads QMP's WATCHDOG event). One line per check:
# `VMTEST PASS name` or `VMTEST FAIL name: why`; `VMTEST RESET-EXPECTED <timeout s>` before
# the keeper is stopped for good; then `VMTEST DONE <failures>`.
. /vm/checks.sh
uptime_s() { cut -d. -f1 /proc/uptime; }

echo "VMTEST kernel $(uname -r)"

# The same embedded eBPF object loads on a current kernel, keeper_arrive included.
if $K watch --cpus 1 --for 2s --format json > /tmp/watch.json 2> "$LOG" \
   && has /tmp/watch.json '"cpu": 1' && has "$LOG" "read from the task (keeper_arrive)" \
   && has /tmp/watch.json '"noise": \[' && has "$LOG" "noise=true"; then
    pass ebpf-loads-6.12
else
    fail ebpf-loads-6.12 "keeper watch failed, printed no CPU 1, could not read arrivals from the task, or measured no IRQ time"
fi

# The keeper inside the GPU VM (policies/brain-vm.yaml, no trading cores) on the fake NVML
# library: research (the lowest-ranked GPU user) runs on a GPU at 85 °C; the thermal guard
# freezes it, and the exit thaws it. No host keeper is there, and none is needed.
mkdir -p /sys/fs/cgroup/research.slice
sh -c "echo \$\$ > /sys/fs/cgroup/research.slice/cgroup.procs; exec /usr/bin/keeper-probe spin 120 vm_research" &
RESEARCH=$!
echo "{\"devices\":[{\"temperature_c\":85,\"utilization_gpu\":97,\"compute_processes\":[{\"pid\":$RESEARCH,\"used_memory_bytes\":1000000000}]}]}" > /tmp/nvml.json
FAKE_NVML_STATE=/tmp/nvml.json $K run --policy /vm/brain-vm.yaml --nvml-lib /usr/bin/libnvidia_ml_fake.so \
    --state-dir /tmp/brain-state --socket /tmp/brain.sock > "$LOG" 2>&1 &
BRAIN=$!
brain_acted() {
    has /sys/fs/cgroup/research.slice/cgroup.events "^frozen 1" \
        && has "$LOG" "no trading cores on this machine" && has "$LOG" "GPU rules active"
}
if wait_for 30 brain_acted; then
    pass "brain-vm-thermal-guard (research frozen at 85 °C; $(grep -o 'gpu=[^=]* uuid' "$LOG" | head -1 | sed 's/ uuid$//'))"
else
    fail brain-vm-thermal-guard "research.slice: $(cat /sys/fs/cgroup/research.slice/cgroup.events | tr '\n' ' ')"
fi
kill -TERM $BRAIN; wait $BRAIN
if has /sys/fs/cgroup/research.slice/cgroup.events "^frozen 0"; then
    pass brain-vm-undone
else
    fail brain-vm-undone "research still frozen after the keeper's exit"
fi
kill -9 $RESEARCH 2>/dev/null

# The kernel-work guards on a current kernel: while the Banker's cores are protected, the
# unbound workqueues run on CPU 0 (the kernel itself keeps them off an isolated partition
# since 6.10, its cpumask_isolated, which the keeper's step names; the guard also covers a
# partition refused or not made), the serial line's interrupt is moved off CPU 1; the exit
# puts both back.
CG=/sys/fs/cgroup
WQ=/sys/devices/virtual/workqueue/cpumask
WQ_ISOLATED=/sys/devices/virtual/workqueue/cpumask_isolated
SER=$(grep -m1 'ttyS0' /proc/interrupts | cut -d: -f1 | tr -d ' ')
WQ_BEFORE=$(cat $WQ)
IRQ_BEFORE=$(cat /proc/irq/$SER/smp_affinity_list)
echo 1 > /proc/irq/$SER/smp_affinity_list
mkdir -p $CG/banker
$K run --policy /vm/guards.yaml --state-dir /tmp/guards-state --socket /tmp/guards.sock > "$LOG" 2>&1 &
GUARDS=$!
guarded() { [ "$(cat $WQ)" = 1 ] && [ "$(cat /proc/irq/$SER/smp_affinity_list)" = 0 ]; }
if wait_for 30 guarded; then
    pass "kernel-work-guarded-6.12 (workqueues on mask $(cat $WQ), was $WQ_BEFORE; banker $(head -1 $CG/banker/cpuset.cpus.partition 2>/dev/null), the kernel's isolated mask $(cat $WQ_ISOLATED 2>/dev/null); IRQ $SER on CPU $(cat /proc/irq/$SER/smp_affinity_list); keeper: $(grep -o 'unbound workqueues on CPUs[^"]*' "$LOG" | head -1))"
else
    fail kernel-work-guarded-6.12 "workqueue mask $(cat $WQ), IRQ $SER on $(cat /proc/irq/$SER/smp_affinity_list), partition $(head -1 $CG/banker/cpuset.cpus.partition 2>/dev/null)"
fi
kill -TERM $GUARDS; wait $GUARDS
if [ "$(cat $WQ)" = "$WQ_BEFORE" ] && [ "$(cat /proc/irq/$SER/smp_affinity_list)" = 1 ]; then
    pass "kernel-work-undone-6.12 (workqueue mask $(cat $WQ), IRQ $SER allowed on CPU 1 again)"
else
    fail kernel-work-undone-6.12 "workqueue mask $(cat $WQ) (was $WQ_BEFORE), IRQ $SER on $(cat /proc/irq/$SER/smp_affinity_list)"
fi
echo "$IRQ_BEFORE" > /proc/irq/$SER/smp_affinity_list
rmdir $CG/banker 2>/dev/null

# A remote partition (6.7+): the Banker's VM scope below qemu.slice, which is no partition
# root, gets CPU 1 through cpuset.cpus.exclusive; qemu.slice stays a member; the exit puts
# every file back.
mkdir -p $CG/qemu.slice/200.scope $CG/lab
sh -c "echo \$\$ > $CG/qemu.slice/200.scope/cgroup.procs; exec sleep 120" & VM=$!
sh -c "echo \$\$ > $CG/lab/cgroup.procs; exec sleep 120" & LAB=$!
# A SCHED_FIFO 99 spinner of lab pinned to CPU 1 before the keeper starts (issue 29): lab's
# cpuset will move it to CPU 0, where at FIFO 99 it would starve the housekeeping core; the
# keeper demotes it first (`stat` field 41: 0) and gives its class back at the exit (1).
policy_of() { cut -d' ' -f41 /proc/$1/stat; }
sh -c "echo \$\$ > $CG/lab/cgroup.procs; exec $P rtspin 600 1 99 vm_rt" & RT=$!
is_fifo() { [ "$(policy_of $RT)" = 1 ]; }
wait_for 10 is_fifo
$K run --policy /vm/remote.yaml --state-dir /tmp/remote-state --socket /tmp/remote.sock > "$LOG" 2>&1 &
REMOTE=$!
part() { head -1 $CG/$1/cpuset.cpus.partition 2>/dev/null; }
remote() {
    [ "$(part qemu.slice/200.scope)" = isolated ] && [ "$(part qemu.slice)" = member ] \
        && has $CG/cpuset.cpus.isolated "1"
}
demoted() { [ "$(policy_of $RT)" = 0 ] && [ "$(taskset -c -p $RT | sed 's/.*: *//')" = 0 ]; }
if wait_for 30 remote && wait_for 10 demoted; then
    RT_DEMOTED=yes
fi
if wait_for 30 remote; then
    pass "remote-partition (qemu.slice/200.scope isolated on CPU $(cat $CG/qemu.slice/200.scope/cpuset.cpus.effective), qemu.slice $(part qemu.slice), exclusive $(cat $CG/qemu.slice/cpuset.cpus.exclusive), lab on $(cat $CG/lab/cpuset.cpus.effective), isolated CPUs $(cat $CG/cpuset.cpus.isolated))"
else
    fail remote-partition "200.scope $(part qemu.slice/200.scope); qemu.slice $(part qemu.slice); isolated $(cat $CG/cpuset.cpus.isolated 2>/dev/null); $(grep -i partition "$LOG" | tail -2)"
fi
# A CPU going offline and back: the partition goes invalid, the keeper says so and protects
# the cores again every 10 s until the partition reads isolated again.
echo 0 > /sys/devices/system/cpu/cpu1/online
if wait_for 20 has "$LOG" "the partition went invalid"; then
    went="$(part qemu.slice/200.scope)"
    echo 1 > /sys/devices/system/cpu/cpu1/online
    if wait_for 30 remote; then
        pass "partition-repaired (offline: '$went'; back: $(part qemu.slice/200.scope))"
    else
        fail partition-repaired "CPU 1 back, partition '$(part qemu.slice/200.scope)'"
    fi
else
    fail partition-repaired "no repair after CPU 1 went offline: '$(part qemu.slice/200.scope)'"
    echo 1 > /sys/devices/system/cpu/cpu1/online
fi
kill -TERM $REMOTE; wait $REMOTE
# Undone deepest first; the cpuset controller the keeper enabled is disabled again, so the
# scope's cpuset files may be gone: a member, or no partition at all.
if [ "$(part qemu.slice/200.scope)" != isolated ] && [ -z "$(cat $CG/qemu.slice/cpuset.cpus.exclusive 2>/dev/null)" ] \
   && [ -z "$(cat $CG/cpuset.cpus.isolated)" ]; then
    pass "remote-partition-undone (scope '$(part qemu.slice/200.scope)', qemu.slice exclusive '$(cat $CG/qemu.slice/cpuset.cpus.exclusive 2>/dev/null)', no CPU isolated)"
else
    fail remote-partition-undone "200.scope $(part qemu.slice/200.scope), exclusive '$(cat $CG/qemu.slice/cpuset.cpus.exclusive)', isolated '$(cat $CG/cpuset.cpus.isolated)'"
fi
if [ "$RT_DEMOTED" = yes ] && is_fifo; then
    pass "rt-intruder-demoted-6.12 (lab's SCHED_FIFO 99 spinner pinned to CPU 1: SCHED_OTHER on CPU 0 beside the remote partition, SCHED_FIFO again after the exit)"
else
    fail rt-intruder-demoted-6.12 "demoted: '${RT_DEMOTED:-no}', class now $(policy_of $RT) on $(taskset -c -p $RT): $(grep -i 'demot' "$LOG" | tail -2)"
fi
kill -9 $VM $LAB $RT 2>/dev/null

# Crash consistency with cgroup v2 controllers (issue 30; the host's harness,
# tests/tests/faults.rs, has none): a keeper built with kill points (keeper-faulty,
# `--features failpoints`) killed with SIGKILL at each step of the remote partition's and lab's
# class's changes (`file`, `enable`: written, made, and around their undo at the exit), then
# the shipped keeper's start (its replay) and exit; every control file of the tree and both
# tasks' CPUs as before, the journal empty.
FK=/usr/bin/keeper-faulty
sh -c "echo \$\$ > $CG/qemu.slice/200.scope/cgroup.procs; exec sleep 600" & VM=$!
sh -c "echo \$\$ > $CG/lab/cgroup.procs; exec sleep 600" & LAB=$!
snap() {
    for d in $CG $CG/qemu.slice $CG/qemu.slice/200.scope $CG/lab; do
        for f in cgroup.subtree_control cpuset.cpus cpuset.cpus.exclusive cpuset.cpus.partition \
                 cpu.weight cpu.max memory.high memory.max; do
            [ -e $d/$f ] && echo "$d/$f $(head -1 $d/$f)"
        done
    done
    echo "isolated $(cat $CG/cpuset.cpus.isolated)"
    taskset -c -p $VM; taskset -c -p $LAB
}
FAULTS_OK=0
FAULTS_BAD=""
for point in file.recorded file.applied file.undoing file.undone \
             enable.recorded enable.applied enable.undoing enable.undone; do
    BEFORE="$(snap)"
    FAILPOINTS="$point=return" $FK run --policy /vm/faults.yaml --state-dir /tmp/faults-state \
        --socket /tmp/faults.sock > /tmp/faulty.log 2>&1 &
    F=$!
    case $point in
        *.undoing|*.undone) wait_for 30 has /tmp/faulty.log "first pass done"; kill -TERM $F ;;
    esac
    wait $F; ST=$?
    $K run --policy /vm/faults.yaml --state-dir /tmp/faults-state --socket /tmp/faults.sock \
        --for 3s > /tmp/replay.log 2>&1
    AFTER="$(snap)"
    if [ "$ST" = 137 ] && has /tmp/faulty.log "failpoint $point: SIGKILL" \
       && [ "$BEFORE" = "$AFTER" ] && [ ! -s /tmp/faults-state/journal.jsonl ]; then
        FAULTS_OK=$((FAULTS_OK + 1))
    else
        FAULTS_BAD="$FAULTS_BAD $point(exit $ST)"
        echo "faults: $point: before/after:"; echo "$BEFORE" > /tmp/b; echo "$AFTER" > /tmp/a
        grep -v -x -F -f /tmp/a /tmp/b | sed 's/^/  before: /'; grep -v -x -F -f /tmp/b /tmp/a | sed 's/^/  after:  /'
        tail -5 /tmp/faulty.log | sed 's/^/  faulty: /'
    fi
done
if [ -z "$FAULTS_BAD" ]; then
    pass "faults-cgroup-v2 ($FAULTS_OK injection points in the partition's and a class's changes, each reached; the tree as before after the replay and exit)"
else
    fail faults-cgroup-v2 "not reached or not back:$FAULTS_BAD"
fi
kill -9 $VM $LAB 2>/dev/null

insmod /mod/watchdog.ko && insmod /mod/i6300esb.ko
if ! wait_for 5 test -c /dev/watchdog; then
    fail watchdog-armed "no /dev/watchdog after insmod i6300esb"
    echo "VMTEST DONE $FAILS"
    exit
fi
mkdir -p /sys/fs/cgroup/banker
start_keeper() {
    $K run --policy /vm/watchdog.yaml --state-dir /tmp/keeper-state --socket /tmp/keeper.sock \
        > "$LOG" 2>&1 &
    KEEPER=$!
    wait_for 30 has "$LOG" "hardware watchdog armed"
}

# Armed, and fed by the loop: the guest outlives the timeout three times over.
if start_keeper; then
    pass "watchdog-armed ($(grep -o 'identity="[^"]*"' "$LOG" | head -1))"
else
    fail watchdog-armed "no 'hardware watchdog armed' in the keeper's log"
fi
t0=$(uptime_s)
sleep 30
pass "watchdog-fed (up $(( $(uptime_s) - t0 )) s with a 10 s timeout while the keeper runs)"

# An orderly exit disarms it (the magic close): the guest stays up.
kill -TERM $KEEPER; wait $KEEPER
if has "$LOG" "hardware watchdog disarmed"; then
    sleep 30
    pass "watchdog-disarmed (up 30 s after the keeper's exit)"
else
    fail watchdog-disarmed "no 'hardware watchdog disarmed' in the keeper's log"
fi

# Armed again, then the keeper hangs (SIGSTOP): the hardware resets the guest.
start_keeper || fail watchdog-reset "not armed the second time"
echo "VMTEST RESET-EXPECTED 10"
echo "VMTEST DONE $FAILS"
kill -STOP $KEEPER
sleep 120
echo "VMTEST FAIL watchdog-reset: still up 120 s after the keeper stopped"
