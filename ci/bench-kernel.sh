#!/usr/bin/env bash
# Usage: ci/bench-kernel.sh [--variant fast|debug | --kernel BZIMAGE] [--repeats N] [--micro]
#                           [--timeout S]
#
# On demand (not part of ci/test.sh): builds benchmarks/memwatch_cycle.c and runs it in ONE
# QEMU guest booted from the memwatch kernel (ci/build-kernel.sh, or --kernel), so every row
# of the printed markdown table (process_memwatch default and NO_REUSED_REGIONS, PAGEMAP_SCAN
# + uffd WP_ASYNC, mprotect + SIGSEGV, sync userfaultfd) and the 1 TiB sparse rows come from
# the same boot. Median microseconds per write-N-pages-then-collect-and-reset cycle; compare
# rows with each other only (TCG). The process_memwatch and PAGEMAP_SCAN rows take turns cycle
# by cycle, so that load on the host hits them alike. A '!' after a number means a collect
# returned the wrong number of pages. --micro first prints, from the same boot, what one call
# costs split up (fixed cost on one clean page, per-entry cost of a clean walk, collect and
# write-fault cost per dirty page) for process_memwatch and PAGEMAP_SCAN.
set -euo pipefail

MW_PROG="bench-kernel"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    local kernel_args=() repeats=11 timeout_s=1200 micro=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --variant) kernel_args=(--variant "${2:?}"); shift 2 ;;
            --kernel) kernel_args=(--kernel "${2:?}"); shift 2 ;;
            --repeats) repeats=${2:?}; shift 2 ;;
            --micro) micro=1; shift ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) mw_die "unknown argument '$1' (see --help)" ;;
        esac
    done
    [[ $repeats =~ ^[0-9]+$ && $repeats -ge 3 ]] || mw_die "--repeats must be an integer >= 3"

    local outdir=$MW_CACHE/bench
    mkdir -p "$outdir"
    gcc -O2 -Wall -Wextra -Werror -pthread -o "$outdir/memwatch_cycle" \
        "$MW_REPO/benchmarks/memwatch_cycle.c"
    mw_log "built $outdir/memwatch_cycle; running it in the guest"
    local bin=$outdir/memwatch_cycle
    if [[ $micro -eq 1 ]]; then
        "$MW_REPO/ci/vm-run.sh" "${kernel_args[@]}" --timeout "$timeout_s" -- \
            bash -c "$(printf '%q micro && %q %q' "$bin" "$bin" "$repeats")"
    else
        "$MW_REPO/ci/vm-run.sh" "${kernel_args[@]}" --timeout "$timeout_s" -- "$bin" "$repeats"
    fi
}

main "$@"
