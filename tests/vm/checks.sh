# Sourced by the guest scripts (tests/vm/guest.sh, tests/vm/current.sh): how a check is said
# (`VMTEST PASS name`, `VMTEST FAIL name: why` with the keeper's last log lines) and waited for.
K=/usr/bin/keeper
P=/usr/bin/keeper-probe
LOG=/tmp/keeper.log
FAILS=0

pass() { echo "VMTEST PASS $1"; }
fail() {
    echo "VMTEST FAIL $1: $2"
    FAILS=$((FAILS + 1))
    [ -f "$LOG" ] && tail -20 "$LOG" | sed 's/^/  keeper: /'
}
# wait_for SECONDS COMMAND...: polls every 0.1 s.
wait_for() {
    t=$(($1 * 10)); shift
    while [ $t -gt 0 ]; do
        "$@" && return 0
        sleep 0.1; t=$((t - 1))
    done
    return 1
}
has() { grep -q "$2" "$1" 2>/dev/null; }
