#!/bin/sh
# The third boot of `cargo xtask vm-test`: trixie's 6.12 on an SMT topology (QEMU `-smp
# 4,sockets=1,cores=2,threads=2`: CPUs 0 and 1 are the two threads of one physical core, 2 and
# 3 of the other). `keeper check --host` names a trading core's sibling that is a housekeeping
# core; `host.smt: reserve_siblings` keeps the sibling free of intruders while the keeper runs,
# and gives it back at exit.
. /vm/checks.sh
CG=/sys/fs/cgroup
echo "VMTEST kernel $(uname -r), siblings of CPU 1: $(cat /sys/devices/system/cpu/cpu1/topology/thread_siblings_list), of CPU 3: $(cat /sys/devices/system/cpu/cpu3/topology/thread_siblings_list)"

$K check --host /vm/smt-shared.yaml > /tmp/check.txt 2>&1
if has /tmp/check.txt "advice: trading core 1 shares its physical core with housekeeping core 0 (SMT)"; then
    pass "smt-advice ($(grep -o 'trading core 1 shares[^:]*' /tmp/check.txt))"
else
    fail smt-advice "$(cat /tmp/check.txt | tr '\n' ' ' | head -c 400)"
fi

# An intruder on the sibling (CPU 2) of trading core 3, in the root cgroup.
allowed() { grep Cpus_allowed_list /proc/$1/status | cut -f2; }
taskset -c 2 $P spin 120 smt_intruder & SPIN=$!
mkdir -p $CG/banker
$K run --policy /vm/smt.yaml --state-dir /tmp/smt-state --socket /tmp/smt.sock > "$LOG" 2>&1 &
SMT=$!
# Evicted (or moved by the partition): allowed on the housekeeping cores 0-1 only.
off_sibling() { [ "$(allowed $SPIN)" = 0-1 ]; }
if wait_for 30 has "$LOG" "reserve_siblings" && wait_for 30 off_sibling; then
    pass "smt-sibling-reserved (keeper: $(grep -o 'siblings=[^ ]*' "$LOG" | head -1), trading $(grep -o 'trading_cores=[^ ]*' "$LOG" | head -1); the intruder on CPU 2 now allowed on $(allowed $SPIN))"
else
    fail smt-sibling-reserved "intruder allowed on $(allowed $SPIN); $(grep -i 'smt\|sibling' "$LOG" | head -3)"
fi
kill -TERM $SMT; wait $SMT
if [ "$(allowed $SPIN)" = 2 ]; then
    pass "smt-undone (the intruder allowed on CPU $(allowed $SPIN) again after the keeper's exit)"
else
    fail smt-undone "intruder allowed on $(allowed $SPIN) after the exit"
fi
kill -9 $SPIN 2>/dev/null
rmdir $CG/banker 2>/dev/null
echo "VMTEST DONE $FAILS"
