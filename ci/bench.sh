#!/usr/bin/env bash
# Usage: ci/bench.sh [--guest] [--out DIR] [--timeout S] [--memory SIZE] [-- PYTEST_ARGS...]
#        (PYTEST_ARGS, e.g. benchmarks/bench_dirty.py -k syscall, replace the default benchmarks/)
#
# On demand (not part of ci/test.sh, which only smoke-runs the benchmarks): the full
# benchmark suite, `python3 -m pytest benchmarks/`, saving pytest-benchmark JSON and the log
# as DIR/<host|guest>-<date>.{json,log} (DIR defaults to benchmarks/results/).
#
#   (no flag)     on this host: rows needing the patched kernel (syscall, softdirty) are absent
#   --guest       in ONE QEMU guest booted from the memwatch kernel (ci/vm-run.sh), so every
#                 backend's rows come from the same boot; sizes shrink there (MEMWATCH_IN_GUEST,
#                 benchmarks/conftest.py) and timings are emulated: compare rows of one run only
#   --memory S    guest RAM (default 3G); --timeout S guest timeout (default 2400)
#
# The summary tables (benchmarks/ratios.py) are the last thing printed; they can be printed
# again from the JSON with `python3 benchmarks/ratios.py FILE.json`.
set -euo pipefail

MW_PROG="bench"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

guest=0 out=$MW_REPO/benchmarks/results timeout_s=2400 memory=3G
while [[ $# -gt 0 ]]; do
    case $1 in
        --guest) guest=1; shift ;;
        --out) out=${2:?}; shift 2 ;;
        --timeout) timeout_s=${2:?}; shift 2 ;;
        --memory) memory=${2:?}; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) mw_die "unknown argument '$1' (see --help)" ;;
    esac
done

mkdir -p "$out"
where=host
((guest)) && where=guest
stem=$out/$where-$(date -u +%Y%m%d-%H%M)
(($#)) || set -- benchmarks/
json=$stem.json
if ((guest)) && [[ $(realpath -m "$out")/ != "$MW_REPO"/* ]]; then
    # The guest sees the host's root read-only, except the repository: write the JSON there
    # and move it to DIR afterwards.
    json=$(mktemp -p "$MW_REPO" .bench-XXXXXX.json)
    trap 'rm -f "$json"' EXIT
fi
cmd=(python3 -m pytest "$@" -q -p no:cacheprovider --durations=10 --benchmark-json="$json")
cd "$MW_REPO"
rc=0
if ((guest)); then
    mw_log "kernel: $(bash ci/build-kernel.sh --print-key), linux/ at $(git log -1 --format=%h -- linux/ 2>/dev/null || echo '?')"
    bash ci/vm-run.sh --timeout "$timeout_s" --memory "$memory" -- \
        env PYTHONPATH="$MW_REPO" "${cmd[@]}" 2>&1 | tee "$stem.log" || rc=$?
else
    PYTHONPATH="$MW_REPO" "${cmd[@]}" 2>&1 | tee "$stem.log" || rc=$?
fi
[[ $json == "$stem.json" ]] || mv -f "$json" "$stem.json" 2>/dev/null || true
mw_log "JSON: $stem.json, log: $stem.log (exit $rc)"
exit "$rc"
