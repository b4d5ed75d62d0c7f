#!/usr/bin/env bash
# Usage: ci/test-stock.sh [--timeout SECONDS] [--print-kernel] [PYTEST_ARG...]
#
# The Python suite on the kernel most users run: Debian 12's stock linux-source-6.1 (no
# memwatch patch; no process_memwatch, no PAGEMAP_SCAN, no UFFD_FEATURE_WP_UNPOPULATED),
# built by `ci/build-kernel.sh --source stock-6.1` (tinyconfig + linux/memwatch.config,
# cached by content hash) and booted in a QEMU guest (ci/vm-run.sh --kernel). Every test
# runs there except those marked `slow`; a test whose mechanism is missing skips with
# the probe's reason, so the run shows what memwatch gives on 6.1. It first prints
# `memwatch.backends()` as seen in that guest.
#
#   --timeout S      kill the guest after S seconds (default 2400)
#   --print-kernel   build (or find) the stock kernel, print its bzImage path, exit
# Exit status: pytest's (a kernel WARNING/BUG report fails the run, as in ci/vm-run.sh).
set -euo pipefail

main() {
    local repo timeout_s=2400 kernel
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    while [[ $# -gt 0 ]]; do
        case $1 in
            --timeout) timeout_s=${2:?}; shift 2 ;;
            --print-kernel) "$repo/ci/build-kernel.sh" --source stock-6.1 | tail -n 1; exit 0 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) break ;;
        esac
    done
    cd "$repo"
    kernel=$("$repo/ci/build-kernel.sh" --source stock-6.1 | tail -n 1)
    "$repo/ci/vm-run.sh" --kernel "$kernel" --timeout "$timeout_s" -- bash -c '
        uname -r
        python3 -c "import memwatch; [print(b) for b in memwatch.backends()]"
        export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # subprocesses test the checkout too
        exec python3 -m pytest -q -rsx -m "not slow" --durations=15 -p no:cacheprovider "$@"' test-stock "$@"
}

main "$@"
