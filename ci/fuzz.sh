#!/usr/bin/env bash
# Usage: ci/fuzz.sh [--calls N] [--variant fast|debug] [--seed S] [--callers T]
#                   [--timeout SECONDS] [--verbose]
#
# Random-argument fuzzing and race stress of process_memwatch (ci/fuzz/memwatch_fuzz.c) in
# one QEMU guest booted from the kernel of `ci/build-kernel.sh --variant V` (default fast;
# debug = KASAN, lockdep, PROVE_RCU, DEBUG_VM). Built on the host against that kernel's
# uapi headers. N calls in all (default 100000) from T caller threads (default 2) against
# this process and a child whose address spaces change all the time; swap on /dev/ram0 and
# ksmd are set up first so MADV_PAGEOUT and MADV_MERGEABLE do something. Fails on an
# errno outside the documented classes, bad output, or any kernel report in the guest log
# (ci/vm-run.sh). Prints the fuzzer's counts line and "fuzz: N calls, ... in S s".
set -euo pipefail

MW_PROG="fuzz"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    local variant=${MEMWATCH_VARIANT:-fast} calls=100000 seed=1 callers=2 timeout_s= verbose=()
    while [[ $# -gt 0 ]]; do
        case $1 in
            --calls) calls=${2:?}; shift 2 ;;
            --variant) variant=${2:?}; shift 2 ;;
            --seed) seed=${2:?}; shift 2 ;;
            --callers) callers=${2:?}; shift 2 ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            --verbose) verbose=(--verbose); shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) mw_die "unknown argument '$1' (see --help)" ;;
        esac
    done
    [[ $calls =~ ^[0-9]+$ && $seed =~ ^[0-9]+$ && $callers =~ ^[0-9]+$ ]] ||
        mw_die "--calls, --seed and --callers take whole numbers"
    # Generous: ~20 ms per call on the debug kernel under TCG, plus the boot.
    [[ -n $timeout_s ]] || timeout_s=$((300 + calls / 40))

    local env_lines kernel headers
    env_lines=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" --print-env)
    kernel=$(sed -n 's/^KERNEL=//p' <<<"$env_lines")
    headers=$(sed -n 's/^HEADERS=//p' <<<"$env_lines")

    local outdir=$MW_CACHE/fuzz/$variant
    mkdir -p "$outdir"
    local bin=$outdir/memwatch_fuzz
    gcc -Wall -Wextra -Werror -O2 -isystem "$headers" -o "$bin" \
        "$MW_REPO/ci/fuzz/memwatch_fuzz.c" -lpthread
    local runner=$outdir/run-in-guest.sh
    {
        echo '#!/bin/bash'
        cat <<'SETUP'
if [[ -b /dev/ram0 ]] && mkswap /dev/ram0 >/dev/null && swapon /dev/ram0; then
    echo "# fuzz setup: swap on /dev/ram0"
fi
if [[ -w /sys/kernel/mm/ksm/run ]]; then
    echo 1000 > /sys/kernel/mm/ksm/pages_to_scan
    echo 20 > /sys/kernel/mm/ksm/sleep_millisecs
    echo 1 > /sys/kernel/mm/ksm/run
fi
SETUP
        printf '%q --calls %q --seed %q --callers %q %s\n' "$bin" "$calls" "$seed" "$callers" "${verbose[*]}"
    } >"$runner"
    chmod +x "$runner"
    local t0 rc=0 log=$outdir/fuzz.log
    t0=$(mw_now)
    "$MW_REPO/ci/vm-run.sh" --kernel "$kernel" --timeout "$timeout_s" -- "$runner" | tee "$log" ||
        rc=${PIPESTATUS[0]}
    if ! grep -q '^memwatch_fuzz: [0-9]* calls' "$log"; then
        [[ $rc -ne 0 ]] || rc=1
        mw_log "FAIL: the fuzzer printed no summary (exit $rc)"
    fi
    echo "fuzz: $calls calls on the $variant kernel, exit $rc, in $(mw_elapsed "$t0") s"
    exit "$rc"
}

main "$@"
