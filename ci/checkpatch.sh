#!/usr/bin/env bash
# Usage: ci/checkpatch.sh [--fail-on-checks] [PATCH...]
#
# Runs the kernel's scripts/checkpatch.pl --strict (from the cached pristine Debian
# linux-source-6.12 tree, extracted on first use) on every patch listed in linux/series, or
# on the given PATCH files. Prints each patch's report and a summary; exits non-zero if any
# patch has an ERROR or a WARNING (and, with --fail-on-checks, a CHECK).
set -euo pipefail

MW_PROG="checkpatch"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

main() {
    local fail_on_checks=0 patches=() p
    while [[ $# -gt 0 ]]; do
        case $1 in
            --fail-on-checks) fail_on_checks=1; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            -*) mw_die "unknown option '$1' (see --help)" ;;
            *) patches+=("$(realpath "$1")"); shift ;;
        esac
    done
    if [[ ${#patches[@]} -eq 0 ]]; then
        local list
        list=$(mw_series_patches)
        [[ -n $list ]] && mapfile -t patches <<<"$list"
    fi
    if [[ ${#patches[@]} -eq 0 ]]; then
        mw_log "linux/series is missing or empty: no patch to check"
        echo "checkpatch: 0 passed, 0 failed"
        exit 0
    fi

    mw_ensure_debs "$MW_SRC_PACKAGE" perl xz-utils make
    local tree
    tree=$(mw_pristine_tree)

    local bad=0 good=0 errors=0 warnings=0 checks=0 out summary e w c rc
    for p in "${patches[@]}"; do
        rc=0
        # UNKNOWN_COMMIT_ID: the Debian source tree has no git history, so checkpatch cannot
        # look up the ids of Fixes: tags; they were checked by hand against mainline.
        out=$(cd "$tree" && perl scripts/checkpatch.pl --strict --color=never \
            --show-types --ignore UNKNOWN_COMMIT_ID "$p" 2>&1) || rc=$?
        summary=$(grep -E '^total: [0-9]+ errors, [0-9]+ warnings' <<<"$out" | tail -n 1 || true)
        if [[ -z $summary ]]; then
            printf '%s\n' "$out"
            mw_log "FAIL ${p##*/}: checkpatch.pl produced no summary (exit $rc)"
            bad=$((bad + 1))
            continue
        fi
        e=$(sed -E 's/^total: ([0-9]+) errors.*/\1/' <<<"$summary")
        w=$(sed -E 's/^total: [0-9]+ errors, ([0-9]+) warnings.*/\1/' <<<"$summary")
        c=$(sed -nE 's/.* ([0-9]+) checks.*/\1/p' <<<"$summary")
        c=${c:-0}
        errors=$((errors + e)) warnings=$((warnings + w)) checks=$((checks + c))
        if ((e > 0 || w > 0 || (fail_on_checks && c > 0))); then
            printf '%s\n' "$out"
            echo "FAIL ${p##*/}: $e errors, $w warnings, $c checks"
            bad=$((bad + 1))
        else
            ((c > 0)) && printf '%s\n' "$out"
            echo "ok   ${p##*/}: $e errors, $w warnings, $c checks"
            good=$((good + 1))
        fi
    done
    echo "checkpatch --strict: $errors errors, $warnings warnings, $checks checks in ${#patches[@]} patches"
    echo "checkpatch: $good passed, $bad failed"
    ((bad == 0))
}

main "$@"
