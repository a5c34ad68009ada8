#!/bin/sh
# The guest half of `cargo xtask bench isolation --guest` (Debian's 6.1 kernel, full cgroup v2,
# TCG): the trading loop (keeper-probe ticks, pinned to CPU 1 in `banker`) against 8 hogs in
# `tenant`, a cgroup of no workload given the highest CPU weight (a neighbour with Proxmox's
# top `cpuunits`), interleaved in rounds: static isolation (the hogs taskset to CPU 0),
# unprotected (the hogs on CPUs 0-1), the keeper enforcing with a partition (`banker` a child
# of the root: bench.yaml) and without one (`vms/banker`, under a parent that is no partition:
# 6.1 refuses it, as for Proxmox's qemu.slice/<vmid>.scope: bench-fallback.yaml), the hogs on
# CPUs 0-1 in both. One line per measure: `BENCH <condition> <round> p50=<µs> p99=<µs>
# share=<‰> partition=<the banker's cpuset.cpus.partition> also_on_cpu1=<other runnable tasks
# there>`, one per keeper run (`BENCH <condition>-record`: its evictions and their latency
# samples, the partition after its exit), then `VMTEST DONE 0`. The host side prints the
# table. TCG timings: only the ratios between conditions mean something.
. /vm/checks.sh
CG=/sys/fs/cgroup
ROUNDS=${bench_rounds:-3}
SECS=${bench_secs:-4}
echo "+cpuset +cpu" > $CG/cgroup.subtree_control
mkdir -p $CG/banker $CG/vms/banker $CG/tenant $CG/bench
echo 10000 > $CG/tenant/cpu.weight
# This script (and its share sampler) holds its own against the tenant on CPU 0.
echo 10000 > $CG/bench/cpu.weight
echo $$ > $CG/bench/cgroup.procs

# start_in CGROUP CPUS COMMAND... &: COMMAND in the cgroup, allowed on CPUS (always started
# with `&`: the backgrounded subshell becomes COMMAND, so `$!` is its pid).
start_in() {
    cg=$1; cpus=$2; shift 2
    exec sh -c 'echo $$ > '"$CG/$cg"'/cgroup.procs; exec taskset -c '"$cpus"' "$@"' start_in "$@"
}

# hogs CPUS: 8 spinners in `tenant` for the measure (their pids in $HOGS).
hogs() {
    HOGS=""
    for i in 1 2 3 4 5 6 7 8; do start_in tenant "$1" $P spin $((SECS + 2)) kb_hog$i & HOGS="$HOGS $!"; done
}
# share: of SECS × 10 looks (every 0.1 s, with no fork: TCG), those that found a hog
# runnable on CPU 1, in per mille (/proc/PID/stat: state, and `processor`, field 39).
share() {
    seen=0; n=0; looks=$((SECS * 10 - 10))
    while [ $n -lt $looks ]; do
        for p in $HOGS; do
            read -r line < /proc/$p/stat || continue
            set -- $line # pid (comm) state ...: no space in the hogs' names
            [ "$3" = R ] && [ "${39}" = 1 ] && seen=$((seen + 1)) && break
        done
        n=$((n + 1)); sleep 0.1
    done
    echo $((seen * 1000 / looks))
}
# others PROBE: the other tasks runnable on CPU 1 now (names, at most 5), or `none`.
others() {
    found=""
    for f in /proc/[0-9]*/stat; do
        read -r line < $f 2>/dev/null || continue
        set -- $line
        [ "$1" = "$PROBE_PID" ] && continue
        [ "$3" = R ] && [ "${39}" = 1 ] && found="$found,$2"
    done
    echo "${found:-,none}" | cut -c2- | cut -d, -f1-5 | tr -d '()'
}
# measure CONDITION ROUND [CGROUP]: the trading loop (period 10 ms, 6 ms of work: TCG scale)
# in CGROUP (default `banker`) for SECS.
measure() {
    cg=${3:-banker}
    start_in $cg 1 $P ticks $SECS 10000 6000 /tmp/ticks.txt &
    probe=$!; PROBE_PID=$probe
    sleep 0.5; sh_share=$(share)
    also=$(others)
    wait $probe
    PART=$(cat $CG/$cg/cpuset.cpus.partition 2>/dev/null)
    for p in $HOGS; do kill $p 2>/dev/null; wait $p 2>/dev/null; done
    n=$(wc -l < /tmp/ticks.txt)
    p50=$(sort -n /tmp/ticks.txt | sed -n "$((n / 2 + 1))p")
    p99=$(sort -n /tmp/ticks.txt | sed -n "$((n * 99 / 100 + 1))p")
    echo "BENCH $1 $2 p50=$p50 p99=$p99 share=$sh_share partition=${PART:-none} also_on_cpu1=$also"
}

# keeper CONDITION ROUND POLICY CGROUP: the keeper enforcing POLICY, the banker in CGROUP.
keeper() {
    rm -rf /tmp/bench-state /tmp/bench-report.json
    # Emptied here, not by the background job's redirection: the wait below must not find the
    # previous keeper's "first pass done" (the hogs would start before this keeper holds CPU 1).
    : > $LOG
    $K run --policy /vm/$3 --state-dir /tmp/bench-state --socket /tmp/bench.sock \
        --for $((SECS + 30))s --report /tmp/bench-report.json >> $LOG 2>&1 &
    KEEPER=$!
    if wait_for 60 has $LOG "first pass done"; then
        hogs 0,1; measure $1 $2 $4
    else
        echo "BENCH $1 $2 failed: $(tail -3 $LOG | tr '\n' ' ')"
    fi
    kill -TERM $KEEPER 2>/dev/null; wait $KEEPER
    # The record's evictions and their latency samples (µs), on one line each.
    flat=$(tr -d ' \n' < /tmp/bench-report.json 2>/dev/null)
    EVICTIONS=$(echo "$flat" | grep -o '"evictions":[0-9]*' | head -1 | grep -o '[0-9]*$')
    SAMPLES=$(echo "$flat" | grep -o '"samples_us":\[[^]]*\]' | head -1 | grep -o '[0-9.,]*' | tr -d '\n')
    after=$(cat $CG/$4/cpuset.cpus.partition 2>/dev/null)
    echo "BENCH $1-record $2 evictions=${EVICTIONS:-?} samples_us=${SAMPLES:-none} partition_after_exit=${after:-none}"
    # KEEPER_BENCH_LOG on the host: the keeper's log of each run, on the console.
    [ -n "$bench_log" ] && sed "s/^/keeper($1 $2)| /" $LOG
}

r=1
while [ $r -le $ROUNDS ]; do
    # This script (and its share sampler) stays on CPU 0, off the trading loop's core.
    taskset -p -c 0 $$ > /dev/null
    hogs 0; measure static $r
    hogs 0,1; measure unprotected $r
    keeper keeper $r bench.yaml banker
    keeper fallback $r bench-fallback.yaml vms/banker
    r=$((r + 1))
done
echo "VMTEST DONE 0"
