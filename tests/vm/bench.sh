#!/bin/sh
# The guest half of `cargo xtask bench isolation --guest` (Debian's 6.1 kernel, full cgroup v2,
# TCG): the trading loop (keeper-probe ticks, pinned to CPU 1 in `banker`) against 8 hogs in
# `load`, interleaved in rounds: static isolation (the hogs taskset to CPU 0), unprotected (the
# hogs on CPUs 0-1), the keeper enforcing (the hogs on CPUs 0-1, the keeper's partition path).
# One line per measure: `BENCH <condition> <round> p50=<µs> p99=<µs> share=<‰>
# partition=<banker's cpuset.cpus.partition> also_on_cpu1=<other runnable tasks there>`, one per keeper run (`BENCH keeper-record`: its
# evictions, the partition after its exit), then `VMTEST DONE 0`. The host side prints the table. TCG timings: only
# the ratios between conditions mean something.
. /vm/checks.sh
CG=/sys/fs/cgroup
ROUNDS=${bench_rounds:-3}
SECS=${bench_secs:-4}
echo "+cpuset +cpu" > $CG/cgroup.subtree_control
mkdir -p $CG/banker $CG/load

# start_in CGROUP CPUS COMMAND... &: COMMAND in the cgroup, allowed on CPUS (always started
# with `&`: the backgrounded subshell becomes COMMAND, so `$!` is its pid).
start_in() {
    cg=$1; cpus=$2; shift 2
    exec sh -c 'echo $$ > '"$CG/$cg"'/cgroup.procs; exec taskset -c '"$cpus"' "$@"' start_in "$@"
}

# hogs CPUS: 8 spinners in `load` for the measure (their pids in $HOGS).
hogs() {
    HOGS=""
    for i in 1 2 3 4 5 6 7 8; do start_in load "$1" $P spin $((SECS + 2)) kb_hog$i & HOGS="$HOGS $!"; done
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
# measure CONDITION ROUND: the trading loop (period 10 ms, 6 ms of work: TCG scale, and more
# than the share the 6.1 scheduler (CFS, with its sleeper credit) leaves it among the hogs) for SECS.
measure() {
    start_in banker 1 $P ticks $SECS 10000 6000 /tmp/ticks.txt &
    probe=$!; PROBE_PID=$probe
    sleep 0.5; sh_share=$(share)
    also=$(others)
    wait $probe
    PART=$(cat $CG/banker/cpuset.cpus.partition 2>/dev/null)
    for p in $HOGS; do kill $p 2>/dev/null; wait $p 2>/dev/null; done
    n=$(wc -l < /tmp/ticks.txt)
    p50=$(sort -n /tmp/ticks.txt | sed -n "$((n / 2 + 1))p")
    p99=$(sort -n /tmp/ticks.txt | sed -n "$((n * 99 / 100 + 1))p")
    echo "BENCH $1 $2 p50=$p50 p99=$p99 share=$sh_share partition=${PART:-none} also_on_cpu1=$also"
}

r=1
while [ $r -le $ROUNDS ]; do
    # This script (and its share sampler) stays on CPU 0, off the trading loop's core; again
    # each round: on 6.1, dissolving the keeper's partition at its exit gives the tasks of
    # the root cgroup the root's CPUs again (their own affinity is not kept before 6.2).
    taskset -p -c 0 $$ > /dev/null
    hogs 0; measure static $r
    hogs 0,1; measure unprotected $r
    rm -rf /tmp/bench-state
    $K run --policy /vm/bench.yaml --state-dir /tmp/bench-state --socket /tmp/bench.sock \
        --for $((SECS + 30))s --report /tmp/bench-report.json > $LOG 2>&1 &
    KEEPER=$!
    if wait_for 60 has $LOG "first pass done"; then
        hogs 0,1; measure keeper $r
    else
        echo "BENCH keeper $r failed: $(tail -3 $LOG | tr '\n' ' ')"
    fi
    kill -TERM $KEEPER 2>/dev/null; wait $KEEPER
    EVICTIONS=$(grep -o '"evictions": *[0-9]*' /tmp/bench-report.json | head -1 | grep -o '[0-9]*$')
    echo "BENCH keeper-record $r evictions=${EVICTIONS:-?} partition_after_exit=$(cat $CG/banker/cpuset.cpus.partition)"
    r=$((r + 1))
done
echo "VMTEST DONE 0"
