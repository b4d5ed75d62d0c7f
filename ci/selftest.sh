#!/usr/bin/env bash
# Usage: ci/selftest.sh [--variant fast|debug] [--abi 64|32|all] [--timeout SECONDS] [--build-only]
#
# Builds the kernel selftest tools/testing/selftests/mm/memwatch_test.c (added by the series)
# from the patched tree of `ci/build-kernel.sh --variant V` against that kernel's installed
# uapi headers, for x86_64 and (--abi all, the default) i386 (gcc -m32, gcc-multilib), then
# runs the binaries in one QEMU guest booted from that kernel (ci/vm-run.sh) and prints their
# TAP output. The TAP is checked, not just the exit status: each binary must print a plan and
# exactly that many ok/not ok lines. Exit status: the first failing binary's, 1 if the TAP is
# incomplete, or vm-run's (124 timeout, 255 no exit status, 1 kernel WARNING/BUG/KASAN/lockdep).
# The last line is "selftest: N passed, N failed, N skipped".
set -euo pipefail

MW_PROG="selftest"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEST_REL=tools/testing/selftests/mm/memwatch_test.c

main() {
    local variant=${MEMWATCH_VARIANT:-fast} abi=all timeout_s=900 build_only=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --variant) variant=${2:?}; shift 2 ;;
            --abi) abi=${2:?}; shift 2 ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            --build-only) build_only=1; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) mw_die "unknown argument '$1' (see --help)" ;;
        esac
    done
    local abis=()
    case $abi in
        64) abis=(64) ;;
        32) abis=(32) ;;
        all) abis=(64 32) ;;
        *) mw_die "--abi must be 64, 32 or all" ;;
    esac

    # Builds (or finds cached) kernel, headers and patched tree.
    local env_lines kernel tree headers config
    env_lines=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" --print-env)
    kernel=$(sed -n 's/^KERNEL=//p' <<<"$env_lines")
    headers=$(sed -n 's/^HEADERS=//p' <<<"$env_lines")
    config=$(sed -n 's/^CONFIG=//p' <<<"$env_lines")
    tree=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" --print-tree | tail -n 1)

    local src=$tree/$TEST_REL
    if [[ ! -f $src ]]; then
        mw_log "FAIL: the series has no selftest yet ($TEST_REL is not in the patched tree $tree;"
        mw_log "      linux/series: $(mw_series_patches | wc -l) patches)"
        echo "selftest: 0 passed, 1 failed"
        exit 1
    fi

    local outdir=$MW_CACHE/selftest/$variant
    rm -rf "$outdir"
    mkdir -p "$outdir"
    local sdir=${src%/*} extra=() a bin cflags
    grep -q '"vm_util.h"' "$src" && extra+=("$sdir/vm_util.c")
    grep -q '"thp_settings.h"' "$src" && extra+=("$sdir/thp_settings.c")
    # Flags of tools/testing/selftests/mm/Makefile (CFLAGS, KHDR_INCLUDES, TOOLS_INCLUDES).
    cflags=(-Wall -O2 -I "$tree" -isystem "$headers" -isystem "$tree/tools/include/uapi")
    for a in "${abis[@]}"; do
        bin=$outdir/memwatch_test_$a
        if [[ $a == 32 ]]; then
            grep -q '^CONFIG_IA32_EMULATION=y' "$config" || mw_die "--abi 32 needs CONFIG_IA32_EMULATION=y"
            mw_ensure_debs gcc-multilib
        fi
        if ! (cd "$sdir" && gcc -m"$a" "${cflags[@]}" -o "$bin" "$src" "${extra[@]}" -lrt -lpthread -lm) \
            >"$outdir/build-$a.log" 2>&1; then
            cat "$outdir/build-$a.log" >&2
            mw_log "FAIL: memwatch_test does not build for -m$a"
            echo "selftest: 0 passed, 1 failed"
            exit 1
        fi
        if grep -q 'warning:' "$outdir/build-$a.log"; then
            cat "$outdir/build-$a.log" >&2
            mw_log "memwatch_test -m$a builds with warnings (above)"
        fi
        mw_log "built $bin"
    done
    if [[ $build_only -eq 1 ]]; then
        printf '%s\n' "$outdir"/memwatch_test_*
        exit 0
    fi

    # One guest boot runs every binary; each section ends with a machine-readable exit line.
    local runner=$outdir/run-in-guest.sh
    {
        echo '#!/bin/bash'
        for a in "${abis[@]}"; do
            printf 'echo "# ==== memwatch_test_%s"\n' "$a"
            printf '%q\n' "$outdir/memwatch_test_$a"
            printf 'echo "# selftest-exit memwatch_test_%s $?"\n' "$a"
        done
    } >"$runner"
    chmod +x "$runner"

    local log=$outdir/tap.log rc=0
    "$MW_REPO/ci/vm-run.sh" --kernel "$kernel" --timeout "$timeout_s" -- "$runner" | tee "$log" || rc=${PIPESTATUS[0]}

    # Check each binary's TAP: plan present, every test reported, exit status.
    local total_pass=0 total_fail=0 total_skip=0 first_bad=0 sect plan n_ok n_notok n_skip st
    for a in "${abis[@]}"; do
        sect=$(awk -v s="# ==== memwatch_test_$a" -v e="# selftest-exit memwatch_test_$a " \
            'index($0, s) == 1 { on = 1; next } index($0, e) == 1 { print; on = 0 } on' "$log")
        st=$(sed -n "s/^# selftest-exit memwatch_test_$a //p" <<<"$sect")
        plan=$(grep -m1 -E '^1\.\.[0-9]+' <<<"$sect" | sed 's/^1\.\.//' || true)
        n_ok=$(grep -cE '^ok [0-9]+' <<<"$sect" || true)
        n_notok=$(grep -cE '^not ok [0-9]+' <<<"$sect" || true)
        n_skip=$(grep -cE '^ok [0-9]+ .*# [Ss][Kk][Ii][Pp]' <<<"$sect" || true)
        if [[ -z $st ]]; then
            mw_log "memwatch_test_$a: no exit status (guest died or timed out during it)"
            total_fail=$((total_fail + 1))
            [[ $first_bad -ne 0 ]] || first_bad=${rc:-1}
            [[ $first_bad -ne 0 ]] || first_bad=1
            continue
        fi
        if [[ -z $plan ]] || ((n_ok + n_notok != plan)); then
            mw_log "memwatch_test_$a: incomplete TAP (plan '${plan:-none}', $n_ok ok, $n_notok not ok)"
            total_fail=$((total_fail + 1))
            [[ $first_bad -ne 0 ]] || first_bad=1
        fi
        if [[ $st -ne 0 || $n_notok -gt 0 ]]; then
            mw_log "memwatch_test_$a: exit status $st, $n_notok failed"
            [[ $first_bad -ne 0 ]] || first_bad=$st
            [[ $first_bad -ne 0 ]] || first_bad=1
        fi
        mw_log "memwatch_test_$a (-m$a): $((n_ok - n_skip)) passed, $n_notok failed, $n_skip skipped of ${plan:-?}, exit $st"
        total_pass=$((total_pass + n_ok - n_skip))
        total_fail=$((total_fail + n_notok))
        total_skip=$((total_skip + n_skip))
    done
    if [[ $first_bad -eq 0 && $rc -ne 0 ]]; then
        first_bad=$rc  # e.g. a kernel WARNING/KASAN report although the tests passed
        total_fail=$((total_fail + 1))
    fi
    echo "selftest: $total_pass passed, $total_fail failed, $total_skip skipped"
    exit "$first_bad"
}

main "$@"
