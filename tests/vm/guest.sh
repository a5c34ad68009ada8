#!/bin/sh
# The guest half of `cargo xtask vm-test`, run by /init in the Debian 6.1 cloud kernel with full
# cgroup v2. One line per check: `VMTEST PASS name` or `VMTEST FAIL name: why`; then
# `VMTEST DONE <failures>`. The host side (xtask/src/vm/) checks that every check passed.
. /vm/checks.sh
CG=/sys/fs/cgroup
# The guest is the test's own machine: the workloads are children of the root cgroup (so the
# Banker's can become a cpuset partition) and the keeper runs without --scope.
S=$CG
STATE=/tmp/keeper-state
SOCK=/tmp/keeper.sock
is() { [ "$(cat "$1" 2>/dev/null)" = "$2" ]; }
frozen() { has "$S/$1/cgroup.events" "^frozen 1"; }
thawed() { has "$S/$1/cgroup.events" "^frozen 0"; }

echo "VMTEST kernel $(uname -r), controllers: $(cat $CG/cgroup.controllers)"

# 1. The same embedded eBPF object loads and attaches on this kernel, keeper_arrive and
#    keeper_joined (raw tracepoints reading a task at offsets from this kernel's BTF) included.
if $K watch --cpus 1 --for 2s --format json > /tmp/watch.json 2> "$LOG" && has /tmp/watch.json '"cpu": 1'; then
    pass ebpf-loads
else
    fail ebpf-loads "keeper watch failed or printed no CPU 1"
fi
if has "$LOG" "read from the task (keeper_arrive)" && ! has "$LOG" "keeper_joined could not be attached"; then
    pass arrivals-from-the-task
else
    fail arrivals-from-the-task "$(grep -i 'arrivals\|keeper_arrive\|BTF' "$LOG" | head -3)"
fi
# The irq tracepoint programs (kernel noise by source) load and attach here too.
if has /tmp/watch.json '"noise": \[' && has "$LOG" "noise=true"; then
    pass noise-measured
else
    fail noise-measured "$(grep -i 'noise\|irq' "$LOG" | head -3)"
fi

# 1b. The IRQ guard on a line of this guest: the serial port's, pinned to CPU 1, fires there
#     while the console writes and `keeper watch` names it; a keeper with host.irq_guard moves
#     it to CPU 0 (its count on CPU 1 stops growing) and allows it on CPU 1 again at exit.
SER=$(grep -m1 'ttyS0' /proc/interrupts | cut -d: -f1 | tr -d ' ')
on_cpu1() { set -- $(grep "^ *$SER:" /proc/interrupts); echo "$3"; }
talk() { i=0; while [ $i -lt 60 ]; do echo "serial line $i for the IRQ check"; i=$((i + 1)); done; }
ORIG_AFFINITY=$(cat /proc/irq/$SER/smp_affinity_list)
echo 1 > /proc/irq/$SER/smp_affinity_list
$K watch --cpus 1 --for 3s --format json > /tmp/irq-watch.json 2>/dev/null &
WATCH=$!
sleep 1.5; talk; wait $WATCH
if has /tmp/irq-watch.json '"name": "ttyS0"'; then
    pass "irq-named (IRQ $SER ttyS0 in keeper watch's noise)"
else
    fail irq-named "IRQ $SER not in $(grep -A3 '"noise"' /tmp/irq-watch.json | tr -d '\n ' | head -c 300)"
fi
mkdir -p $S/banker
$K run --policy /vm/irq.yaml --state-dir /tmp/irq-state --socket /tmp/irq.sock --for 6s > /tmp/irq.log 2>&1 &
IRQ_KEEPER=$!
if wait_for 20 is /proc/irq/$SER/smp_affinity_list 0; then
    talk; sleep 0.5; c0=$(on_cpu1); talk; sleep 0.5; c1=$(on_cpu1)
    wait $IRQ_KEEPER
    after=$(cat /proc/irq/$SER/smp_affinity_list)
    if [ "$c1" = "$c0" ] && [ "$after" = 1 ]; then
        pass "irq-guard (IRQ $SER moved to CPU 0, CPU 1 count held at $c0 while the console wrote; allowed on $after again at exit)"
    else
        fail irq-guard "CPU 1 count $c0 -> $c1 while moved; affinity after exit $after"
    fi
else
    fail irq-guard "IRQ $SER still on $(cat /proc/irq/$SER/smp_affinity_list): $(tail -5 /tmp/irq.log)"
    wait $IRQ_KEEPER
fi
echo "$ORIG_AFFINITY" > /proc/irq/$SER/smp_affinity_list

# The workloads' cgroups, with every controller delegated.
echo "+cpuset +cpu +memory" > $CG/cgroup.subtree_control
mkdir -p $S/banker $S/eva $S/muse $S/lab
# What the keeper must put back.
for f in muse/cpu.max muse/memory.high muse/memory.max muse/cpu.weight banker/cpuset.cpus \
         banker/cpuset.cpus.partition muse/cpuset.cpus eva/cpuset.cpus; do
    cat $S/$f > /tmp/orig.$(echo $f | tr / _)
done
$P spin 600 vm_muse & MUSE=$!
echo $MUSE > $S/muse/cgroup.procs
$P sleep 600000 1000 & EVA=$!
echo $EVA > $S/eva/cgroup.procs
$P sleep 600000 1000 & BANKER=$!
echo $BANKER > $S/banker/cgroup.procs
# A service of no workload that pinned itself to CPU 0 (in the root cgroup, like this script):
# 6.1 forgets a task's own affinity when its cpuset changes, so the partition's end at the
# keeper's exit would leave it on CPUs 0-1; the keeper puts its own mask back.
$P sleep 600000 1000 & PINNED=$!
taskset -p -c 0 $PINNED > /dev/null
# And one in EVA's cgroup, whose cpuset.cpus the keeper narrows and widens again.
$P sleep 600000 1000 & EVA_PINNED=$!
echo $EVA_PINNED > $S/eva/cgroup.procs
taskset -p -c 0 $EVA_PINNED > /dev/null

# 2b. The Banker's trading hours end in the middle of a run (a keeper of its own, policy
#     release.yaml: a window from 12:00 to 12:01, the clock set to 12:00:15): its partition
#     ends while the keeper runs. Muse gets CPU 1 back (6.1 refuses its empty cpuset.cpus
#     while it has tasks: the keeper writes the parent's CPUs), and EVA's task pinned to CPU 0,
#     which 6.1 gives the whole cpuset again, is put back on CPU 0 then, not at the exit only.
mask_of() { taskset -c -p $1 | sed 's/.*: *//'; }
alone_on_0() { [ "$(mask_of $EVA_PINNED)" = 0 ]; }
CLOCK=$(date -u +%s)
date -u -s "$(date -u +%Y-%m-%d) 12:00:15" > /dev/null
$K run --policy /vm/release.yaml --state-dir /tmp/release-state --socket /tmp/release.sock \
    > /tmp/release.log 2>&1 &
RELEASE_KEEPER=$!
if wait_for 40 grep -Eq '^(isolated|root)' $S/banker/cpuset.cpus.partition \
   && wait_for 90 has /tmp/release.log "release trading cores" \
   && wait_for 10 is $S/muse/cpuset.cpus.effective 0-1 && wait_for 10 alone_on_0; then
    pass "own-mask-kept-mid-run (the Banker's window ended: partition $(cat $S/banker/cpuset.cpus.partition), muse on $(cat $S/muse/cpuset.cpus.effective), EVA's task pinned to CPU 0 on $(mask_of $EVA_PINNED))"
else
    fail own-mask-kept-mid-run "partition $(cat $S/banker/cpuset.cpus.partition), muse on $(cat $S/muse/cpuset.cpus.effective), EVA's task pinned to CPU 0 on $(mask_of $EVA_PINNED): $(grep -i 'release\|own\|error' /tmp/release.log | tail -3)"
fi
kill -TERM $RELEASE_KEEPER; wait $RELEASE_KEEPER
date -u -s "$(date -u -d @$((CLOCK + 60)) "+%Y-%m-%d %H:%M:%S")" > /dev/null

start_keeper() {
    # Emptied here, not by the background job's redirection: the wait below must not find the
    # previous keeper's "keeper running".
    : > "$LOG"
    $K run --policy /vm/policy.yaml --state-dir $STATE --socket $SOCK \
        --memory-psi $S/lab/memory.pressure "$@" >> "$LOG" 2>&1 &
    KEEPER=$!
    wait_for 60 has "$LOG" "keeper running" || fail start "keeper run did not start"
}
start_keeper

# 2. The trading core as a cpuset partition for the Banker, and off everyone else's cpuset.
if wait_for 20 grep -Eq '^(isolated|root)' $S/banker/cpuset.cpus.partition \
   && is $S/banker/cpuset.cpus.effective 1 \
   && ! grep -q 1 $S/muse/cpuset.cpus.effective && ! grep -q 1 $S/eva/cpuset.cpus.effective; then
    pass "partition ($(cat $S/banker/cpuset.cpus.partition); banker $(cat $S/banker/cpuset.cpus.effective), muse $(cat $S/muse/cpuset.cpus.effective))"
else
    fail partition "banker partition=$(cat $S/banker/cpuset.cpus.partition) effective=$(cat $S/banker/cpuset.cpus.effective), muse effective=$(cat $S/muse/cpuset.cpus.effective), eva effective=$(cat $S/eva/cpuset.cpus.effective)"
fi

# 3. Muse's class limits: cpu.max 25 % of 2 CPUs, memory.high 256M, and the spinner is throttled.
if wait_for 20 is $S/muse/cpu.max "50000 100000" && is $S/muse/memory.high 268435456; then
    t0=$(grep nr_throttled $S/muse/cpu.stat | cut -d' ' -f2)
    u0=$(grep usage_usec $S/muse/cpu.stat | cut -d' ' -f2)
    sleep 2
    t1=$(grep nr_throttled $S/muse/cpu.stat | cut -d' ' -f2)
    u1=$(grep usage_usec $S/muse/cpu.stat | cut -d' ' -f2)
    share=$(( (u1 - u0) / 20000 ))
    if [ $t1 -gt $t0 ] && [ $share -le 60 ]; then
        pass "cpu.max+memory.high (throttled $((t1 - t0)) times, ${share}% of a CPU)"
    else
        fail cpu.max "not throttled: nr_throttled $t0 -> $t1, ${share}% of a CPU"
    fi
else
    fail cpu.max+memory.high "cpu.max=$(cat $S/muse/cpu.max) memory.high=$(cat $S/muse/memory.high)"
fi

# 4. EVA's interaction freezes Muse (confirmed by cgroup.events), its end thaws it.
$K interaction start --socket $SOCK > /tmp/i.json 2>&1
if frozen muse && has /tmp/i.json '"ok": true'; then
    pass freeze
else
    fail freeze "after interaction start: $(cat $S/muse/cgroup.events | tr '\n' ' ') $(head -c 300 /tmp/i.json)"
fi
$K interaction stop --socket $SOCK > /dev/null 2>&1
if wait_for 30 thawed muse; then pass thaw; else fail thaw "muse still frozen 30 s after interaction stop"; fi

# 4b. The memory sensor: a hog over its cgroup's memory.max stalls in reclaim and is
#     OOM-killed; the running keeper logs the kill and records both (keeper report --live).
mkdir -p $S/oomer
echo 48M > $S/oomer/memory.max
sh -c "echo \$\$ > $S/oomer/cgroup.procs; exec $P mem 128 30" & OOMER=$!
wait $OOMER 2>/dev/null
if wait_for 20 has "$LOG" "OOM kill pid=" \
   && $K report --live --format json --socket $SOCK > /tmp/live.json 2>&1 \
   && has /tmp/live.json '"oom_kills": \[' && ! has /tmp/live.json '"oom_kills": \[\]' \
   && grep -q '"stalls": [1-9]' /tmp/live.json; then
    pass "oom-and-reclaim ($(grep -o "OOM kill pid=.*" "$LOG" | head -1 | cut -c1-150); $(grep -o "\"stalls\": [0-9]*" /tmp/live.json | head -1))"
else
    fail oom-and-reclaim "no OOM kill / reclaim stalls seen: $(grep -c 'OOM kill' "$LOG") log lines; $(grep -A3 oom_kills /tmp/live.json | head -5 | tr '\n' ' ')"
fi

# 4c. The memory ladder under real pressure: a 420 MiB hog in lab (class micro: memory.high
#     400 MB) stalls; the keeper lowers lab's memory.high to 48M, then freezes lab, before any
#     OOM kill; when the hog is gone, lab is thawed and its memory.high restored.
sh -c "echo \$\$ > $S/banker/cgroup.procs; exec $P mem 32 120" & BMEM=$!
sh -c "echo \$\$ > $S/lab/cgroup.procs; exec $P mem 420 120" & LHOG=$!
if wait_for 40 is $S/lab/memory.high 50331648; then
    pass "memory-high-held ($(head -1 $S/lab/memory.pressure))"
else
    fail memory-high-held "lab memory.high=$(cat $S/lab/memory.high); $(head -1 $S/lab/memory.pressure)"
fi
if wait_for 60 frozen lab && kill -0 $LHOG 2>/dev/null && ! has "$LOG" "OOM kill pid=.*cgroup=/lab"; then
    pass "frozen-before-oom ($(tail -1 $S/lab/memory.pressure))"
else
    fail frozen-before-oom "lab $(cat $S/lab/cgroup.events | tr '\n' ' '); $(tail -1 $S/lab/memory.pressure)"
fi
kill -9 $LHOG 2>/dev/null; wait $LHOG 2>/dev/null
if wait_for 60 thawed lab; then pass "ladder-undone"; else fail ladder-undone "lab still frozen after the hog died"; fi
# The protected workload (rank 1, the trading-core owner) went through it untouched and alive.
if kill -0 $BMEM 2>/dev/null && thawed banker && is $S/banker/memory.high max \
   && ! has "$LOG" "OOM kill pid=.*cgroup=/banker"; then
    pass "protected-untouched (banker alive, memory.high max, never frozen, no OOM kill)"
else
    fail protected-untouched "banker: alive=$(kill -0 $BMEM 2>/dev/null && echo yes || echo no) memory.high=$(cat $S/banker/memory.high) $(cat $S/banker/cgroup.events | tr '\n' ' ')"
fi
kill -9 $BMEM 2>/dev/null; wait $BMEM 2>/dev/null

# 5. kill -9 while Muse is frozen and limited; a new keeper puts everything back.
$K interaction start --socket $SOCK > /dev/null 2>&1
wait_for 10 frozen muse
kill -9 $KEEPER; wait $KEEPER 2>/dev/null
if frozen muse && is $S/muse/cpu.max "50000 100000"; then
    pass still-applied-after-kill9
else
    fail still-applied-after-kill9 "muse $(cat $S/muse/cgroup.events | tr '\n' ' ') cpu.max=$(cat $S/muse/cpu.max)"
fi
# The next start replays the journal first; SIGTERM then undoes what that run did.
start_keeper
has "$LOG" "undid a change" || fail restore-after-kill9 "the restart logged no undone change"
kill -TERM $KEEPER; wait $KEEPER
ok=1
for f in muse/cpu.max muse/memory.high muse/memory.max muse/cpu.weight banker/cpuset.cpus \
         banker/cpuset.cpus.partition muse/cpuset.cpus eva/cpuset.cpus; do
    orig=$(cat /tmp/orig.$(echo $f | tr / _))
    now=$(cat $S/$f)
    # 6.1 refuses an empty cpuset.cpus while the cgroup has tasks: the keeper then restores
    # the parent's CPUs, the same set.
    case "$f" in */cpuset.cpus) [ -z "$orig" ] && [ "$now" = "$(cat $CG/cpuset.cpus.effective)" ] && now="";; esac
    if [ "$orig" != "$now" ]; then
        ok=0; fail restore-after-kill9 "$f is '$now', was '$orig'"
    fi
done
thawed muse || { ok=0; fail restore-after-kill9 "muse still frozen"; }
[ $ok = 1 ] && pass "restore-after-kill9 (thawed; cpu.max, memory.high, cpuset, partition back)"
if [ "$(mask_of $PINNED)" = 0 ] && alone_on_0; then
    pass "own-mask-kept (tasks pinned to CPU 0 before the partition, in the root cgroup and EVA's, are on CPU 0 after its end)"
else
    fail own-mask-kept "the tasks pinned to CPU 0 are on CPUs $(mask_of $PINNED) (root cgroup) and $(mask_of $EVA_PINNED) (EVA's) after the keeper's exit"
fi

kill -9 $MUSE $EVA $BANKER $PINNED $EVA_PINNED 2>/dev/null

# 6. A PSI trigger on a cgroup's memory.pressure fires under real memory pressure: 96 MiB of
#    anonymous memory kept hot under memory.high = 32M (no swap: the kernel throttles it).
mkdir -p $S/hog
echo 32M > $S/hog/memory.high
sh -c "echo \$\$ > $S/hog/cgroup.procs; exec $P mem 96 40" & HOG=$!
if $P psi-wait $S/hog/memory.pressure 10 30 > /tmp/psi.out 2>&1; then
    pass "psi-trigger ($(cat /tmp/psi.out); $(head -1 $S/hog/memory.pressure))"
else
    fail psi-trigger "$(cat /tmp/psi.out); $(head -1 $S/hog/memory.pressure)"
fi
kill -9 $HOG 2>/dev/null

# 7. A protected workload's own memory.pressure drives the ladder. The pressure the memory
#    rules read (--memory-psi: lab's, idle) stays calm; the Banker (rank 1) stalls under a
#    memory.high this script set itself (the keeper never limits rank 1). The keeper's trigger
#    on banker/memory.pressure fires, and the lowest-ranked running workload, lab, gets
#    memory.high 48M: trigger to first action, on a real stall.
start_keeper
wait_for 10 has "$LOG" "memory pressure triggers armed on workloads"
sh -c "echo \$\$ > $S/lab/cgroup.procs; exec sleep 120" & LSLEEP=$!
echo 32M > $S/banker/memory.high
t0=$(cut -d' ' -f1 /proc/uptime | tr -d .)
sh -c "echo \$\$ > $S/banker/cgroup.procs; exec $P mem 96 60" & BHOG=$!
if wait_for 30 is $S/lab/memory.high 50331648 \
   && has "$LOG" "trigger fired on a workload's memory.pressure workload=banker"; then
    t1=$(cut -d' ' -f1 /proc/uptime | tr -d .)
    pass "protected-pressure (banker's stall → lab memory.high 48M in $(( (t1 - t0) * 10 )) ms; $(head -1 $S/banker/memory.pressure))"
else
    fail protected-pressure "lab memory.high=$(cat $S/lab/memory.high); banker $(head -1 $S/banker/memory.pressure); $(grep -c 'trigger fired' "$LOG") trigger lines"
fi
kill -9 $BHOG $LSLEEP 2>/dev/null; wait $BHOG $LSLEEP 2>/dev/null
echo max > $S/banker/memory.high
kill -TERM $KEEPER; wait $KEEPER

# 8. A task that re-pins itself cannot come back where the keeper narrows cpusets
#    (tests/vm/repeat.yaml: the Banker under a parent that is no partition, so CPU 1 is held by
#    cpusets and evictions, not a partition). A task of `noisy` (under `tenants`, which was
#    given the cpu controller only: the keeper enables cpuset above it) calls
#    sched_setaffinity(CPU 1) every millisecond: it is evicted once, then the kernel refuses
#    every re-pin (its cpuset lacks CPU 1), so it never returns and no repeat-offender rule
#    (`then: throttle` there) has anything to do; the keeper's exit puts tenants' controllers
#    back (cpu only), and noisy's cpuset with them.
#    (Returns, and throttle, freeze or stop, are for hosts without cpuset v2: tests/tests/daemon.rs.)
mkdir -p $S/vms/banker $S/tenants
echo "+cpuset +cpu" > $S/vms/cgroup.subtree_control
echo "+cpu" > $S/tenants/cgroup.subtree_control
mkdir -p $S/tenants/noisy
NOISY=$S/tenants/noisy
NOISY_MAX=$(cat $NOISY/cpu.max)
sh -c "echo \$\$ > $S/vms/banker/cgroup.procs; exec sleep 120" & RBANKER=$!
$K run --policy /vm/repeat.yaml --state-dir /tmp/repeat-state --socket /tmp/repeat.sock \
    > /tmp/repeat.log 2>&1 &
REPEAT_KEEPER=$!
wait_for 60 has /tmp/repeat.log "first pass done"
sh -c "echo \$\$ > $NOISY/cgroup.procs; exec $P repin 60 1 vm_repin" & REPIN=$!
on_0() { [ "$(taskset -c -p $REPIN | sed 's/.*: *//')" = 0 ] && is $NOISY/cpuset.cpus.effective 0; }
if wait_for 20 on_0 && sleep 3 && on_0 && ! has /tmp/repeat.log "vm_repin.*return" \
   && is $NOISY/cpu.max "$NOISY_MAX"; then
    kill -TERM $REPEAT_KEEPER; wait $REPEAT_KEEPER
    # The exit puts tenants' controllers back as they were (cpu only): noisy's cpuset is gone.
    if is $S/tenants/cgroup.subtree_control cpu && [ ! -e $NOISY/cpuset.cpus ]; then
        pass "repin-refused-by-cpuset (the re-pinning task held on CPU 0 by noisy's cpuset, no return, cpu.max $NOISY_MAX; tenants' controllers back to cpu at exit)"
    else
        fail repin-refused-by-cpuset "tenants' controllers after the exit: $(cat $S/tenants/cgroup.subtree_control), noisy cpuset $(cat $NOISY/cpuset.cpus 2>&1)"
    fi
else
    fail repin-refused-by-cpuset "offender on $(taskset -c -p $REPIN), noisy cpuset $(cat $NOISY/cpuset.cpus.effective 2>&1), cpu.max $(cat $NOISY/cpu.max): $(grep -i 'vm_repin\|noisy\|error\|warn' /tmp/repeat.log | tail -4)"
    kill -TERM $REPEAT_KEEPER; wait $REPEAT_KEEPER
fi
kill -9 $REPIN $RBANKER 2>/dev/null; wait $REPIN $RBANKER 2>/dev/null

# 9. A real-time task pinned to the trading core before the keeper starts, in a workload whose
#    cpuset the keeper narrows (issue 29): the kernel moves it to CPU 0 with the cpuset, at its
#    class, where SCHED_FIFO 99 would starve the housekeeping core (the keeper's loop among
#    the rest); the keeper demotes it to SCHED_OTHER first (`stat` field 41: 0), answers
#    `status` meanwhile, and gives its class back at the exit (1: SCHED_FIFO).
policy_of() { cut -d' ' -f41 /proc/$1/stat; }
sh -c "echo \$\$ > $S/vms/banker/cgroup.procs; exec sleep 120" & RBANKER=$!
sh -c "echo \$\$ > $NOISY/cgroup.procs; exec $P rtspin 600 1 99 vm_rt" & RT=$!
is_fifo() { [ "$(policy_of $RT)" = 1 ]; }
wait_for 10 is_fifo
$K run --policy /vm/repeat.yaml --state-dir /tmp/rt-state --socket /tmp/rt.sock > /tmp/rt.log 2>&1 &
RT_KEEPER=$!
demoted() { [ "$(policy_of $RT)" = 0 ] && [ "$(taskset -c -p $RT | sed 's/.*: *//')" = 0 ]; }
if wait_for 60 demoted && $K status --socket /tmp/rt.sock > /tmp/rt-status.json; then
    kill -TERM $RT_KEEPER; wait $RT_KEEPER
    if [ "$(policy_of $RT)" = 1 ]; then
        pass "rt-intruder-demoted (a SCHED_FIFO 99 spinner of noisy pinned to CPU 1: SCHED_OTHER on CPU 0 while the keeper ran, status answered, SCHED_FIFO again after the exit)"
    else
        fail rt-intruder-demoted "class after the exit: $(policy_of $RT): $(grep -i 'demot\|error\|warn' /tmp/rt.log | tail -4)"
    fi
else
    fail rt-intruder-demoted "class $(policy_of $RT) on $(taskset -c -p $RT): $(grep -i 'demot\|noisy\|error\|warn' /tmp/rt.log | tail -4)"
    kill -TERM $RT_KEEPER; wait $RT_KEEPER
fi
kill -9 $RT $RBANKER 2>/dev/null; wait $RT $RBANKER 2>/dev/null

echo "VMTEST DONE $FAILS"
