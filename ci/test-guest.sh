#!/usr/bin/env bash
# Usage: ci/test-guest.sh [--variant fast|debug] [--timeout SECONDS] [PYTEST_ARG...]
#
# Runs the Python tests marked `guest` (pytest -m guest) inside a QEMU guest booted from the
# memwatch kernel (ci/vm-run.sh: same python3, repository at the same path, cwd = repo).
# Exit status: pytest's, except that 5 (no test collected) counts as success; a kernel
# WARNING/BUG/KASAN/lockdep report during the run fails it.
set -euo pipefail

main() {
    local repo variant=${MEMWATCH_VARIANT:-fast} timeout_s=1800 rc=0
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    while [[ $# -gt 0 ]]; do
        case $1 in
            --variant) variant=${2:?}; shift 2 ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) break ;;
        esac
    done
    cd "$repo"
    "$repo/ci/vm-run.sh" --variant "$variant" --timeout "$timeout_s" -- \
        python3 -m pytest -q -rs -m guest -p no:cacheprovider "$@" || rc=$?
    if [[ $rc -eq 5 ]]; then
        echo "test-guest: pytest collected no guest test" >&2
        rc=0
    fi
    exit "$rc"
}

main "$@"
