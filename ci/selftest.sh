#!/usr/bin/env bash
# Usage: ci/selftest.sh [--variant fast|debug] [--abi 64|32|all] [--timeout SECONDS]
#                       [--only memwatch|mm] [--build-only]
#
# Builds the kernel selftest tools/testing/selftests/mm/memwatch_test.c (added by the series)
# from the patched tree of `ci/build-kernel.sh --variant V` against that kernel's installed
# uapi headers, for x86_64 and (--abi all, the default) i386 (gcc -m32, gcc-multilib), plus
# the kernel's own soft-dirty and pagemap_ioctl selftests (x86_64) from the same tree, to show
# the series does not regress clear_refs or PAGEMAP_SCAN; --only picks one group. All binaries
# run in one QEMU guest booted from that kernel (ci/vm-run.sh), after a setup that the tests
# themselves leave alone (they skip, with the reason, without it): swap on a 64 MiB RAM disk
# (/dev/ram0), ksmd running (fast scan), two reserved hugetlb pages, Yama ptrace_scope=1
# (the kernel's default, which the virtme-ng guest turns off), two NUMA nodes when the kernel
# has CONFIG_NUMA (vm-run.sh --numa 2). The TAP is checked, not just the exit status: each binary must print
# a plan and exactly that many ok/not ok lines. Exit status: the first failing binary's, 1 if
# the TAP is incomplete, or vm-run's (124 timeout, 255 no exit status, 1 kernel
# WARNING/BUG/KASAN/lockdep). The last line is "selftest: N passed, N failed, N skipped".
set -euo pipefail

MW_PROG="selftest"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TEST_REL=tools/testing/selftests/mm/memwatch_test.c

main() {
    local variant=${MEMWATCH_VARIANT:-fast} abi=all timeout_s=1500 build_only=0 only=all
    while [[ $# -gt 0 ]]; do
        case $1 in
            --variant) variant=${2:?}; shift 2 ;;
            --abi) abi=${2:?}; shift 2 ;;
            --timeout) timeout_s=${2:?}; shift 2 ;;
            --build-only) build_only=1; shift ;;
            --only) only=${2:?}; shift 2 ;;
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
    case $only in all|memwatch|mm) ;; *) mw_die "--only must be memwatch or mm" ;; esac

    # Builds (or finds cached) kernel, headers and patched tree.
    local env_lines kernel tree headers config
    env_lines=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" --print-env)
    kernel=$(sed -n 's/^KERNEL=//p' <<<"$env_lines")
    headers=$(sed -n 's/^HEADERS=//p' <<<"$env_lines")
    config=$(sed -n 's/^CONFIG=//p' <<<"$env_lines")
    tree=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" --print-tree | tail -n 1)

    # Two NUMA nodes (migration_while_clearing moves pages between them) when the kernel has NUMA.
    local numa=1
    grep -q '^CONFIG_NUMA=y' "$config" && numa=2

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
    local sdir=${src%/*} a bin cflags name
    local extra=("$sdir/vm_util.c" "$sdir/thp_settings.c")
    # Flags of tools/testing/selftests/mm/Makefile (CFLAGS, KHDR_INCLUDES, TOOLS_INCLUDES).
    cflags=(-Wall -O2 -I "$tree" -isystem "$headers" -isystem "$tree/tools/include/uapi")
    # name:abi:source of every binary, in the order they run.
    local bins=()
    if [[ $only != mm ]]; then
        for a in "${abis[@]}"; do bins+=("memwatch_test_$a:$a:memwatch_test.c"); done
    fi
    if [[ $only != memwatch ]]; then
        bins+=("soft-dirty_64:64:soft-dirty.c" "pagemap_ioctl_64:64:pagemap_ioctl.c")
    fi
    local entry srcfile
    for entry in "${bins[@]}"; do
        IFS=: read -r name a srcfile <<<"$entry"
        bin=$outdir/$name
        if [[ $a == 32 ]]; then
            grep -q '^CONFIG_IA32_EMULATION=y' "$config" || mw_die "--abi 32 needs CONFIG_IA32_EMULATION=y"
            mw_ensure_debs gcc-multilib
        fi
        if ! (cd "$sdir" && gcc -m"$a" "${cflags[@]}" -o "$bin" "$srcfile" "${extra[@]}" -lrt -lpthread -lm) \
            >"$outdir/build-$name.log" 2>&1; then
            cat "$outdir/build-$name.log" >&2
            mw_log "FAIL: $name does not build"
            echo "selftest: 0 passed, 1 failed"
            exit 1
        fi
        # thp_settings.c's own -Wignored-qualifiers noise is upstream's, not ours.
        if grep 'warning:' "$outdir/build-$name.log" | grep -qv 'thp_settings'; then
            cat "$outdir/build-$name.log" >&2
            mw_log "$name builds with warnings (above)"
        fi
        mw_log "built $bin"
    done
    if [[ $build_only -eq 1 ]]; then
        printf '%s\n' "$outdir"/*_{32,64}
        exit 0
    fi

    # One guest boot runs every binary; each section ends with a machine-readable exit line.
    local runner=$outdir/run-in-guest.sh
    {
        echo '#!/bin/bash'
        cat <<'SETUP'
# Setup the tests rely on but never do themselves (they skip with a reason without it).
if [[ -b /dev/ram0 ]] && mkswap /dev/ram0 >/dev/null && swapon /dev/ram0; then
    echo "# setup: swap on /dev/ram0: $(sed -n 2p /proc/swaps)"
else
    echo "# setup: no swap (no /dev/ram0 or swapon failed): swap cases will skip"
fi
if [[ -w /sys/kernel/mm/ksm/run ]]; then
    echo 1000 > /sys/kernel/mm/ksm/pages_to_scan
    echo 20 > /sys/kernel/mm/ksm/sleep_millisecs
    echo 1 > /sys/kernel/mm/ksm/run
    echo "# setup: ksmd running"
fi
echo "# setup: NUMA nodes: $(cat /sys/devices/system/node/online 2>/dev/null || echo none)"
echo 2 > /proc/sys/vm/nr_hugepages 2>/dev/null
echo 1 > /proc/sys/kernel/yama/ptrace_scope 2>/dev/null
echo "# setup: hugetlb pages: $(cat /proc/sys/vm/nr_hugepages 2>/dev/null)," \
    "yama ptrace_scope: $(cat /proc/sys/kernel/yama/ptrace_scope 2>/dev/null || echo none)"
# pagemap_ioctl creates files next to its own name: run in a scratch dir.
cd "$(mktemp -d)" || exit 1
SETUP
        for entry in "${bins[@]}"; do
            name=${entry%%:*}
            printf 'echo "# ==== %s"\n' "$name"
            printf '%q\n' "$outdir/$name"
            printf 'echo "# selftest-exit %s $?"\n' "$name"
        done
    } >"$runner"
    chmod +x "$runner"

    local log=$outdir/tap.log rc=0
    "$MW_REPO/ci/vm-run.sh" --kernel "$kernel" --numa "$numa" --timeout "$timeout_s" -- "$runner" | tee "$log" || rc=${PIPESTATUS[0]}

    # Check each binary's TAP: plan present, every test reported, exit status.
    local total_pass=0 total_fail=0 total_skip=0 first_bad=0 sect plan n_ok n_notok n_skip st
    for entry in "${bins[@]}"; do
        name=${entry%%:*}
        sect=$(awk -v s="# ==== $name" -v e="# selftest-exit $name " \
            'index($0, s) == 1 { on = 1; next } index($0, e) == 1 { print; on = 0 } on' "$log")
        st=$(sed -n "s/^# selftest-exit $name //p" <<<"$sect")
        plan=$(grep -m1 -E '^1\.\.[0-9]+' <<<"$sect" | sed 's/^1\.\.//' || true)
        n_ok=$(grep -cE '^ok [0-9]+' <<<"$sect" || true)
        n_notok=$(grep -cE '^not ok [0-9]+' <<<"$sect" || true)
        n_skip=$(grep -cE '^ok [0-9]+ .*# [Ss][Kk][Ii][Pp]' <<<"$sect" || true)
        if [[ -z $st ]]; then
            mw_log "$name: no exit status (guest died or timed out during it)"
            total_fail=$((total_fail + 1))
            [[ $first_bad -ne 0 ]] || first_bad=${rc:-1}
            [[ $first_bad -ne 0 ]] || first_bad=1
            continue
        fi
        if [[ -z $plan ]] || ((n_ok + n_notok != plan)); then
            mw_log "$name: incomplete TAP (plan '${plan:-none}', $n_ok ok, $n_notok not ok)"
            total_fail=$((total_fail + 1))
            [[ $first_bad -ne 0 ]] || first_bad=1
        fi
        if [[ $st -ne 0 || $n_notok -gt 0 ]]; then
            mw_log "$name: exit status $st, $n_notok failed"
            [[ $first_bad -ne 0 ]] || first_bad=$st
            [[ $first_bad -ne 0 ]] || first_bad=1
        fi
        mw_log "$name: $((n_ok - n_skip)) passed, $n_notok failed, $n_skip skipped of ${plan:-?}, exit $st"
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
