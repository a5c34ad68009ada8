# The host guest's checks (cargo xtask vm-test --only host; issue 31), run by vmtest.service
# of the image as root, systemd being PID 1: the keeper installed from its .deb with dpkg,
# started, reloaded, killed and stopped by systemd; LXC container 101 placed as Proxmox places
# it (lxc/101); the Banker VM 200 a QEMU of 4 vCPUs started as Proxmox starts one
# (systemd-run --scope --slice=qemu --unit=200); EVA a unit whose interaction freezes the lab
# and starts llama.service. Before the install, what the keeper may change is written down; the
# stop and the purge must leave it as it was.
. /vm/checks.sh
exec 2>&1
LOG=/tmp/keeper.log
SOCK=/run/keeper/keeper.sock
fail() {
    echo "VMTEST FAIL $1: $2"
    FAILS=$((FAILS + 1))
    journalctl -u keeper --no-pager -o cat -n 25 | sed 's/^/  keeper: /'
}
journal() { journalctl -u keeper --no-pager -o cat "$@"; }
prop() { systemctl show -P "$1" keeper; }

systemctl is-system-running --wait >/dev/null 2>&1
echo "VMTEST BOOTED $(systemctl is-system-running) $(uname -r) cpus=$(nproc) controllers=$(cat /sys/fs/cgroup/cgroup.controllers | tr ' ' ,)"
echo "VMTEST NOTE $(systemd-analyze 2>/dev/null | head -1)"
systemd-analyze blame 2>/dev/null | head -5 | sed 's/^/VMTEST NOTE blame /'

# --- the stand-ins: EVA, llama, the lab container, the Banker VM ---
for u in eva llama; do
    printf '[Service]\nExecStart=/bin/sleep infinity\n' > /etc/systemd/system/$u.service
done
systemctl daemon-reload
systemctl start eva.service
# No network here; the kernel has AppArmor but the image no profiles (Proxmox generates one
# per container): unconfined.
printf 'lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n' > /etc/lxc/default.conf
lxc-create -n 101 -t busybox >/tmp/lxc-create.log 2>&1 || { echo "VMTEST NOTE lxc-create failed"; tail -20 /tmp/lxc-create.log; }
cat >> /var/lib/lxc/101/config <<EOF
lxc.cgroup.dir.container = lxc/101
lxc.cgroup.dir.monitor = lxc.monitor/101
lxc.cgroup.dir.container.inner = ns
EOF
lxc-start -n 101 -l DEBUG -o /tmp/lxc.log || { echo "VMTEST NOTE lxc-start failed"; grep -E "ERROR|WARN" /tmp/lxc.log | tail -20; }
ct_running() { [ "$(lxc-info -n 101 -s -H 2>/dev/null)" = RUNNING ]; }
wait_for 20 ct_running
CT=/sys/fs/cgroup/lxc/101
mkdir -p /run/qemu-server
systemd-run --quiet --scope --slice=qemu --unit=200 -- qemu-system-x86_64 -S \
    -name banker,debug-threads=on -smp 4 -m 64 -accel tcg -nodefaults -display none \
    -qmp unix:/run/qemu-server/200.qmp,server=on,wait=off >/dev/null 2>&1 &
VM=/sys/fs/cgroup/qemu.slice/200.scope
wait_for 20 grep -q . $VM/cgroup.procs
QEMU=$(head -1 $VM/cgroup.procs)
wait_for 20 sh -c "grep -l 'CPU 3/TCG' /proc/$QEMU/task/*/comm >/dev/null 2>&1"
echo "VMTEST NOTE container $(lxc-info -n 101 -s -H) in $(cat /proc/$(lxc-info -n 101 -p -H)/cgroup); VM 200 pid $QEMU, vCPUs $(grep -l 'CPU ' /proc/$QEMU/task/*/comm | wc -l)"

# vcpu N: the thread id of QEMU's vCPU N.
vcpu() { grep -l "^CPU $1/" /proc/$QEMU/task/*/comm | head -1 | cut -d/ -f5; }
# class TID: its scheduling policy (0 SCHED_OTHER, 1 SCHED_FIFO) and priority.
class() { cut -d')' -f2 /proc/$1/stat | awk '{print $39 "/" $38}'; }
allowed() { grep Cpus_allowed_list /proc/$1/status | cut -f2; }
# What the keeper may change: the cgroups' control files and freezes, every task's CPUs and
# class of the VM, the container and the units, the interrupt lines, the workqueue mask, units.
snapshot() {
    for cg in /sys/fs/cgroup /sys/fs/cgroup/qemu.slice $VM /sys/fs/cgroup/lxc $CT \
        /sys/fs/cgroup/system.slice/eva.service; do
        for f in cgroup.subtree_control cpuset.cpus cpuset.cpus.exclusive cpuset.cpus.partition \
            cpu.max cpu.weight memory.high memory.max cgroup.freeze; do
            [ -f $cg/$f ] && echo "$cg/$f $(cat $cg/$f)"
        done
    done
    for p in $(cat $VM/cgroup.procs $CT/ns/cgroup.procs $CT/cgroup.procs 2>/dev/null \
        /sys/fs/cgroup/system.slice/eva.service/cgroup.procs); do
        for t in /proc/$p/task/*; do
            t=${t##*/}
            echo "task $(cat /proc/$t/comm) $(allowed $t) $(class $t)"
        done
    done | sort
    for i in /proc/irq/*/smp_affinity_list; do echo "$i $(cat $i)"; done
    echo "workqueues $(cat /sys/devices/virtual/workqueue/cpumask)"
    echo "llama $(systemctl is-active llama) eva $(systemctl is-active eva)"
}
snapshot > /tmp/before
same_as_before() {
    snapshot > /tmp/after
    diff /tmp/before /tmp/after > /tmp/diff && return 0
    sed 's/^/  changed: /' /tmp/diff
    return 1
}

# --- the package, and systemd's start ---
dpkg -i /vm/keeper.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; }
# The package's own policy observes only: started as installed, the keeper runs and changes
# nothing; `keeper run` without --policy reads it.
if timeout 120 systemctl start keeper && [ "$(systemctl is-active keeper)" = active ] &&
    sleep 3 && same_as_before && timeout 10 keeper status >/dev/null; then
    pass "host-conffile-observes ($(journal | grep -o 'no workloads[^"]*' | head -1))"
else
    fail host-conffile-observes "the installed policy: $(systemctl is-active keeper)"
fi
timeout 100 systemctl stop keeper
mv /etc/keeper/policy.yaml /tmp/shipped.yaml
if keeper run --for 1s >/tmp/nopolicy.log 2>&1 || ! grep -q "no policy at /etc/keeper/policy.yaml" /tmp/nopolicy.log; then
    fail host-conffile-observes "keeper run without a policy: $(cat /tmp/nopolicy.log)"
fi
cp /vm/host.yaml /etc/keeper/policy.yaml
if timeout 120 systemctl start keeper && [ "$(systemctl is-active keeper)" = active ]; then
    pass host-systemd-ready
else
    fail host-systemd-ready "systemctl start keeper: $(systemctl is-active keeper)"
fi
PID=$(prop MainPID)
sleep 2

# --- the 4-vCPU Banker on 2 trading CPUs: one vCPU per CPU where it is alone, no two sharing
# a CPU at a real-time priority; `keeper check --host` and the start say so ---
ok=1
for n in 0 1 2 3; do
    t=$(vcpu $n)
    want=$((2 + n % 2))
    [ "$(allowed $t)" = "$want" ] || { ok=0; echo "  vCPU $n on $(allowed $t), not $want"; }
    case "$(class $t)" in 0/*) ;; *) ok=0; echo "  vCPU $n at $(class $t) on a shared CPU" ;; esac
done
check=$(keeper check --host /etc/keeper/policy.yaml 2>&1)
echo "$check" | grep -q "4 vCPUs" || { ok=0; echo "  keeper check --host: $check"; }
journal | grep -q "share a trading core" || { ok=0; echo "  the start did not say the vCPUs share"; }
[ $ok = 1 ] && pass host-vcpus-one-per-core || fail host-vcpus-one-per-core "vCPUs misplaced"

# --- the lab container throttled, frozen for EVA's interaction, thawed after; llama started
# and stopped again; a unit active before is left active ---
frozen() { grep -q "frozen $1" $CT/cgroup.events 2>/dev/null; }
timeout 10 keeper interaction start >/dev/null
if wait_for 10 frozen 1 && ! grep -q "^max " $CT/cpu.max; then
    timeout 10 keeper interaction stop >/dev/null
    wait_for 15 frozen 0 && pass host-lxc-frozen || fail host-lxc-frozen "not thawed after the interaction"
else
    timeout 10 keeper interaction stop >/dev/null
    fail host-lxc-frozen "frozen $(cat $CT/cgroup.freeze), cpu.max $(cat $CT/cpu.max)"
fi
# llama_is STATE: (a function: wait_for runs it again each time, with a fresh answer)
llama_is() { [ "$(systemctl is-active llama)" = "$1" ]; }
wait_for 15 llama_is inactive
started=0
timeout 10 keeper interaction start >/dev/null
wait_for 30 llama_is active && started=1
timeout 10 keeper interaction stop >/dev/null
wait_for 30 llama_is inactive || started=0
systemctl start llama
timeout 10 keeper interaction start >/dev/null
sleep 3
timeout 10 keeper interaction stop >/dev/null
sleep 4
if [ $started = 1 ] && [ "$(systemctl is-active llama)" = active ]; then
    pass host-start-on-unit
else
    fail host-start-on-unit "started and stopped: $started; active before, after: $(systemctl is-active llama)"
    journalctl -u llama --no-pager -o cat | tail -5 | sed 's/^/  llama: /'
fi
systemctl stop llama

# --- a task of the container sent to a trading core: it never runs there ---
lxc-attach -n 101 -- /bin/busybox sh -c 'while :; do :; done' &
ATT=$!
sleep 2
SPIN=$(for p in $(find $CT -name cgroup.procs -exec cat {} +); do
    grep -q "while" /proc/$p/cmdline 2>/dev/null && echo $p; done | tail -1)
taskset -pc 2 "$SPIN" >/dev/null 2>&1
on_trading=0
for i in $(seq 30); do
    cpu=$(cut -d')' -f2 /proc/$SPIN/stat 2>/dev/null | awk '{print $37}')
    case "$cpu" in 2|3) on_trading=$((on_trading + 1)) ;; esac
    sleep 0.1
done
kill "$SPIN" 2>/dev/null; kill $ATT 2>/dev/null
if [ -n "$SPIN" ] && [ $on_trading -eq 0 ]; then
    pass host-lxc-evicted
else
    fail host-lxc-evicted "the container's spinner ($SPIN) was seen on a trading CPU $on_trading times of 30 ($(allowed $SPIN))"
fi

# --- systemd's watchdog fed all along: no restart, the same process ---
if [ "$(prop MainPID)" = "$PID" ] && [ "$(prop NRestarts)" = 0 ] && [ -n "$(prop WatchdogUSec)" ] && [ "$(prop WatchdogUSec)" != 0 ]; then
    pass host-systemd-watchdog
else
    fail host-systemd-watchdog "MainPID $PID → $(prop MainPID), restarts $(prop NRestarts), WatchdogUSec $(prop WatchdogUSec)"
fi

# --- journald: warnings at their priority; no line said over and over (before, a refused
# seat on the partition's CPUs was said at each tick) ---
warn=$(journalctl -u keeper -p warning --no-pager -o cat)
top=$(journal | sort | uniq -c | sort -rn | head -1)
if echo "$warn" | grep -q "share a trading core" && ! echo "$warn" | grep -q "keeper running" &&
    [ "$(echo "$top" | awk '{print $1}')" -le 10 ]; then
    pass host-journald-priority
else
    fail host-journald-priority "journalctl -p warning: $(echo "$warn" | head -5); most said: $top"
fi

# --- systemctl reload: the trading cores moved to 1-3 in the file, applied by the same
# process: vCPUs 1 and 2 alone on CPUs 2 and 3 at SCHED_FIFO 1, 0 and 3 sharing CPU 1 ---
sed -i 's/trading_cores: "2-3", housekeeping_cores: "0-1"/trading_cores: "1-3", housekeeping_cores: "0"/' /etc/keeper/policy.yaml
echo "VMTEST NOTE reload: trading cores 2-3 → 1-3"
# What runs where while the reload goes through, from above every other task (SCHED_FIFO 99).
SCRIPT=$$
export SCRIPT
chrt -f 99 sh -c 'for i in 1 2 3 4 5 6; do sleep 10; echo "VMTEST NOTE top $i:"; ps -eLo tid,cls,rtprio,psr,pcpu,comm --sort=-pcpu | head -4 | sed "s/^/VMTEST NOTE   /"; ps -eo pid,stat,wchan:22,args | grep -E "systemctl|keeper|timeout" | grep -v grep | sed "s/^/VMTEST NOTE   ps /"; systemctl list-jobs --no-legend | sed "s/^/VMTEST NOTE   job /"; ps -o pid,stat,psr,wchan:22,args -p $SCRIPT --ppid $SCRIPT | sed "s/^/VMTEST NOTE   script /"; grep Cpus_allowed_list /proc/$SCRIPT/status | sed "s/^/VMTEST NOTE   script /"; journalctl -u keeper --no-pager -o cat -n 4 | cut -c1-200 | sed "s/^/VMTEST NOTE   journal /"; ps -eo pid,ppid,stat,psr,cls,wchan:20,args | grep -E " (grep|head|cut) " | grep -v "grep -E" | sed "s/^/VMTEST NOTE   pipe /"; journalctl -u keeper --no-pager -o cat | grep -iE "offender|stop intruder|SIGSTOP" | tail -3 | cut -c1-250 | sed "s/^/VMTEST NOTE   stopped /"; done' &
DIAG=$!
timeout 60 systemctl reload keeper || echo "VMTEST NOTE systemctl reload keeper: failed or hung"
echo "VMTEST NOTE reloaded: $(journal | grep -i reload | tail -2 | tr '\n' ' ')"
placed() {
    [ "$(allowed $(vcpu 1))" = 2 ] && [ "$(allowed $(vcpu 2))" = 3 ] && [ "$(allowed $(vcpu 0))" = 1 ] &&
        [ "$(class $(vcpu 1))" = 1/1 ] && [ "$(class $(vcpu 2))" = 1/1 ] && [ "$(class $(vcpu 0))" = 0/0 ]
}
if wait_for 20 placed && [ "$(prop MainPID)" = "$PID" ]; then
    pass host-systemd-reload
else
    fail host-systemd-reload "MainPID $PID → $(prop MainPID); vCPUs: $(for n in 0 1 2 3; do echo -n "$n:$(allowed $(vcpu $n)),$(class $(vcpu $n)) "; done)"
fi

kill $DIAG 2>/dev/null
# --- systemctl kill -s KILL: systemd restarts it; the new keeper's replay undoes what the
# dead one held (the lab frozen for an interaction the new one never heard of) ---
echo "VMTEST NOTE kill -9 by systemd"
timeout 10 keeper interaction start >/dev/null
wait_for 10 frozen 1
timeout 30 systemctl kill -s KILL keeper
wait_for 30 sh -c "[ \"\$(systemctl show -P NRestarts keeper)\" -ge 1 ] && [ \"\$(systemctl is-active keeper)\" = active ]"
if [ "$(prop MainPID)" != "$PID" ] && [ "$(systemctl is-active keeper)" = active ] && wait_for 15 frozen 0; then
    pass host-systemd-restart-replay
else
    fail host-systemd-restart-replay "MainPID $PID → $(prop MainPID) ($(systemctl is-active keeper)), lab frozen: $(cat $CT/cgroup.freeze)"
fi

# --- systemctl stop: every change undone ---
echo "VMTEST NOTE stop"
if timeout 100 systemctl stop keeper && same_as_before; then
    pass host-systemd-stop-undone
else
    fail host-systemd-stop-undone "the host differs from before the install"
fi

# --- keeper init from /etc/pve as pmxcfs lays it out (qemu-server and lxc are the local node's
# folders): this guest's 2 cores × 2 threads give the 4-vCPU Banker the second core's first
# thread, its sibling reserved, and no real-time priority (its vCPUs share) ---
mkdir -p /etc/pve/nodes/hive/qemu-server /etc/pve/nodes/hive/lxc
ln -sfn nodes/hive/qemu-server /etc/pve/qemu-server
ln -sfn nodes/hive/lxc /etc/pve/lxc
printf 'cores: 4\nmemory: 64\nname: banker\nsockets: 1\n' > /etc/pve/qemu-server/200.conf
printf 'arch: amd64\ncores: 1\nhostname: lab\nmemory: 512\n' > /etc/pve/lxc/101.conf
rm -f /tmp/init.yaml
if keeper init --output /tmp/init.yaml 2>/tmp/init.err && keeper check --host /tmp/init.yaml >/tmp/init.check 2>&1 &&
    grep -q 'trading_cores: "2"' /tmp/init.yaml && grep -q 'smt: reserve_siblings' /tmp/init.yaml &&
    grep -q 'match: { ctid: 101 }' /tmp/init.yaml && ! grep -q 'vcpu_priority' /tmp/init.yaml; then
    pass "host-init-from-pve ($(grep -c 'name:' /tmp/init.yaml) names; $(grep -m1 '^  # ' /tmp/init.yaml | cut -c5-90))"
else
    fail host-init-from-pve "$(cat /tmp/init.err /tmp/init.yaml /tmp/init.check 2>/dev/null | head -40)"
fi
rm -rf /etc/pve

echo "VMTEST NOTE purge"
# --- apt-get purge while it runs: stopped (its undo), and no file, unit or change left ---
systemctl start keeper
sleep 2
apt-get purge -y keeper >/tmp/purge.log 2>&1 || cat /tmp/purge.log
left=""
for f in /usr/bin/keeper /usr/lib/systemd/system/keeper.service /etc/keeper /var/lib/keeper /run/keeper; do
    [ -e $f ] && left="$left $f"
done
[ -n "$(systemctl list-unit-files --no-legend keeper.service 2>/dev/null)" ] && left="$left (unit file known)"
[ "$(systemctl is-active keeper)" = active ] && left="$left (still running)"
if [ -z "$left" ] && same_as_before; then
    pass host-deb-purged
else
    fail host-deb-purged "left:$left"
fi

lxc-stop -k -n 101 >/dev/null 2>&1
kill "$QEMU" 2>/dev/null
echo "VMTEST DONE $FAILS"
systemctl poweroff --no-block
