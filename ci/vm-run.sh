#!/usr/bin/env bash
# Usage: ci/vm-run.sh [--variant fast|debug | --kernel BZIMAGE] [--timeout SECONDS]
#                     [--memory SIZE] [--cpus N] [--kvm auto|on|off] [--env NAME=VALUE]...
#                     [--show-console] [--keep] -- CMD [ARG...]
#
# Runs CMD inside a QEMU guest (virtme-ng) booted from the memwatch kernel and exits with
# CMD's exit status. The guest sees the host root filesystem read-only, this repository
# read-write at the same path, and a writable scratch dir ($MEMWATCH_SCRATCH in the guest,
# under ~/.cache/memwatch/runs/ on the host). CMD runs as root with cwd = the caller's cwd,
# the same python3 (/root/.pyenv) and a whitelisted environment (PATH, HOME, LANG, CI,
# PYENV_*, PYTHON*, PYTEST_*, MEMWATCH_*, plus --env). CMD's stderr is merged into stdout.
#
#   --variant V      kernel from `ci/build-kernel.sh --variant V` (default fast, or $MEMWATCH_VARIANT)
#   --kernel PATH    use this bzImage instead
#   --timeout S      kill the guest after S seconds (default 900) -> exit 124
#   --memory SIZE    guest RAM (default 2G); --cpus N guest vCPUs (default 2)
#   --numa N         N NUMA nodes (memory split evenly, vCPUs on node 0; needs CONFIG_NUMA)
#   --kvm MODE       auto (default, $MEMWATCH_KVM): KVM only if a cached probe booted a guest
#                    with it on this host kernel; otherwise TCG (--disable-kvm)
#   --show-console   also stream the guest kernel console to stderr
#   --keep           keep the run dir (console log, dmesg) even when everything passed
#
# Exit status: CMD's; 124 on timeout; 255 if the guest never reported one (panic, broken
# init); if CMD succeeded but the kernel log has a WARNING:/BUG:/KASAN:/lockdep/RCU report,
# 1 with the report printed. The kernel console is saved as <run dir>/console.log.
set -euo pipefail

MW_PROG="vm-run"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

variant=${MEMWATCH_VARIANT:-fast}
kernel=
timeout_s=900
memory=2G
cpus=2
numa=0
kvm_mode=${MEMWATCH_KVM:-auto}
show_console=0
keep=0
extra_env=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --variant) variant=${2:?}; shift 2 ;;
        --kernel) kernel=${2:?}; shift 2 ;;
        --timeout) timeout_s=${2:?}; shift 2 ;;
        --memory) memory=${2:?}; shift 2 ;;
        --cpus) cpus=${2:?}; shift 2 ;;
        --numa) numa=${2:?}; shift 2 ;;
        --kvm) kvm_mode=${2:?}; shift 2 ;;
        --env) extra_env+=("${2:?}"); shift 2 ;;
        --show-console) show_console=1; shift ;;
        --keep) keep=1; shift ;;
        --) shift; break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        -*) mw_die "unknown option '$1' (see --help)" ;;
        *) break ;;
    esac
done
[[ $# -gt 0 ]] || mw_die "no command given (usage: ci/vm-run.sh [options] -- CMD...)"
[[ $timeout_s =~ ^[0-9]+$ ]] || mw_die "--timeout takes whole seconds"
case $kvm_mode in auto|on|off) ;; *) mw_die "--kvm must be auto, on or off" ;; esac

mw_ensure_vm_deps

if [[ -z $kernel ]]; then
    kernel=$("$MW_REPO/ci/build-kernel.sh" --variant "$variant" | tail -n 1)
fi
[[ -f $kernel ]] || mw_die "kernel image '$kernel' not found"

# Patterns of kernel reports that fail a run (kernel log lines, PRINTK_TIME prefixed).
report_re='(WARNING:|BUG:|KASAN:|UBSAN:|Oops|general protection fault|Kernel panic|kernel BUG at|possible circular locking|possible recursive locking|inconsistent lock state|suspicious RCU usage|Unable to handle kernel)'

# vng_cmd KVM_FLAG RUN_DIR GUEST_SCRIPT: the virtme-ng command line.
vng_cmd() {
    local kvm_flag=$1 run=$2 script=$3
    # Root over 9p (deterministic: virtiofs only if a Rust virtiofsd happens to be installed),
    # with cache=loose (the root is read-only, so no coherency to lose): python3 -c pass
    # starts 3-4x faster than with virtme's default cache=none.
    local cmd=(vng --run "$kernel" --verbose --force-9p --memory "$memory" --cpus "$cpus"
        --append "rootflags=version=9p2000.L,trans=virtio,access=any,msize=512000,cache=loose"
        --rwdir "$MW_REPO" --rwdir "$run" --exec "bash $script")
    [[ -n $kvm_flag ]] && cmd+=("$kvm_flag")
    # --numa N: vng --numa MEM[,cpus=] once per node (node memory must add up to --memory).
    # Every vCPU on node 0, the other nodes memory only: QEMU's default topology puts all
    # vCPUs in one socket, and CPUs of one LLC on two nodes make the kernel WARN at boot.
    if [[ $numa -gt 1 ]]; then
        local mib i
        mib=$(numfmt --from=iec "$memory")
        mib=$((mib / 1048576 / numa))
        cmd+=(--numa "${mib}M,cpus=0-$((cpus - 1))")
        for ((i = 1; i < numa; i++)); do
            cmd+=(--numa "${mib}M")
        done
    fi
    printf '%q ' "${cmd[@]}"
}

# --- KVM: never trusted from the device node; one real boot per host kernel release --------
kvm_usable() {
    local verdict_file
    verdict_file=$MW_CACHE/kvm-probe/$(uname -r)
    if [[ -f $verdict_file ]]; then
        [[ $(head -n 1 "$verdict_file") == ok ]]
        return
    fi
    mkdir -p "${verdict_file%/*}"
    if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
        echo "no: /dev/kvm not accessible" >"$verdict_file"
        return 1
    fi
    mw_log "probing KVM once for host kernel $(uname -r) (60 s max; verdict cached in $verdict_file)"
    local run t0 rc=0
    run=$(mktemp -d "$MW_CACHE/runs/kvm-probe.XXXXXX")
    printf '%s\n' '#!/bin/bash' 'dmesg | grep -q "Hypervisor detected: KVM"' >"$run/probe.sh"
    t0=$(mw_now)
    # shellcheck disable=SC2046  # vng_cmd output is %q-quoted
    (cd / && eval timeout --kill-after=5 60 $(vng_cmd "" "$run" "$run/probe.sh") \
        </dev/null 2>&1 >"$run/stdout.log" | cat >"$run/console.log"; exit "${PIPESTATUS[0]}") || rc=$?
    local took
    took=$(mw_elapsed "$t0")
    if [[ $rc -eq 0 ]]; then
        echo "ok: guest booted with KVM in $took s" >"$verdict_file"
    else
        echo "broken: no guest detected KVM (vng exit $rc after $took s; 124 = hung)" >"$verdict_file"
        tr -d '\r' <"$run/console.log" | grep -v '^[[:space:]]*$' | tail -n 3 >>"$verdict_file" || true
    fi
    mw_log "KVM probe: $(head -n 1 "$verdict_file")"
    [[ $rc -eq 0 ]]
}

mkdir -p "$MW_CACHE/runs"
kvm_flag=--disable-kvm
case $kvm_mode in
    on) kvm_flag= ;;
    off) ;;
    auto) if kvm_usable; then kvm_flag=; fi ;;
esac

# Keep the 30 most recent run dirs.
find "$MW_CACHE/runs" -mindepth 1 -maxdepth 1 -type d -name 'run.*' -printf '%T@ %p\n' 2>/dev/null |
    sort -rn | tail -n +30 | cut -d' ' -f2- | xargs -r rm -rf

run=$(mktemp -d "$MW_CACHE/runs/run.XXXXXX")
script=$run/guest.sh
{
    echo '#!/bin/bash'
    echo '# generated by ci/vm-run.sh'
    echo 'exec 2>&1'
    while IFS='=' read -r name _; do
        case $name in
            PATH|HOME|LANG|LC_*|TERM|TZ|CI|USER|LOGNAME|PYENV_*|PYTHON*|PYTEST_*|PIP_*|MEMWATCH_*)
                printf 'export %s=%q\n' "$name" "${!name}" ;;
        esac
    done < <(env)
    # The interpreter's own bin dir first: pyenv's shims are bash scripts that cost seconds
    # per call under TCG. Same python3, same site-packages.
    if py_bin=$(python3 -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null); then
        # shellcheck disable=SC2016  # $PATH expands in the guest
        printf 'export PATH=%q:"$PATH"\n' "$py_bin"
    fi
    for e in "${extra_env[@]}"; do printf 'export %q\n' "$e"; done
    printf 'export MEMWATCH_SCRATCH=%q MEMWATCH_IN_GUEST=1\n' "$run"
    printf 'cd %q || exit 97\n' "$PWD"
    printf '%q ' "$@"
    echo
    # shellcheck disable=SC2016  # expanded in the guest
    echo 'rc=$?'
    printf 'dmesg >%q 2>&1\n' "$run/dmesg.txt"
    # shellcheck disable=SC2016  # expanded in the guest
    printf 'echo "$rc" >%q\n' "$run/exit-status"
    # shellcheck disable=SC2016
    echo 'exit "$rc"'
} >"$script"

mw_log "guest: $(basename "$kernel") ($kernel), ${kvm_flag:+TCG }${kvm_flag:-KVM}, $cpus vCPU, $memory, timeout ${timeout_s}s, run dir $run"
t0=$(mw_now)
rc=0
# stdin from /dev/null: CI has none, and virtme needs a valid fd 0. The console (and virtme's
# own messages) go to stderr of vng -> console.log; CMD's output to our stdout.
vng_line=$(vng_cmd "$kvm_flag" "$run" "$script")
echo "$vng_line" >"$run/vng-command"
# QEMU opens /proc/self/fd/1 and /proc/self/fd/2 once per virtio port, each with its own
# offset: on a regular file the ports overwrite each other. Hence pipes on both sides.
console_sink() { if [[ $show_console -eq 1 ]]; then tee "$run/console.log" >&2; else cat >"$run/console.log"; fi; }
set +e
{
    eval timeout --kill-after=10 "$timeout_s" "$vng_line" </dev/null 2>&1 >&3 3>&- | console_sink
    echo "${PIPESTATUS[0]}" >"$run/vng-status"
} 3>&1 | cat
set -e
rc=$(cat "$run/vng-status")
took=$(mw_elapsed "$t0")

status=ok
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    mw_log "TIMEOUT: guest killed after ${timeout_s}s; last console lines ($run/console.log):"
    tail -n 40 "$run/console.log" >&2
    rc=124
    status=timeout
elif [[ $rc -eq 255 && ! -f $run/exit-status ]]; then
    mw_log "guest never reported an exit status (kernel panic, failed boot or init); last console lines ($run/console.log):"
    tail -n 60 "$run/console.log" >&2
    status=no-exit-status
fi

# Kernel reports: the console log has everything since boot; dmesg.txt is the guest's own view.
reports=$(cat "$run/console.log" "$run/dmesg.txt" 2>/dev/null | tr -d '\r' |
    grep -E "^\[ *[0-9]+\.[0-9]+\] .*$report_re" | sort -u || true)
if [[ -n $reports ]]; then
    mw_log "KERNEL REPORT in the guest log ($run/console.log):"
    printf '%s\n' "$reports" | head -n 20 >&2
    # The first report with its context (stack trace).
    first=$(printf '%s\n' "$reports" | head -n 1)
    grep -n -F -- "$first" "$run/console.log" | head -n 1 | cut -d: -f1 | {
        read -r n || exit 0
        sed -n "$((n > 5 ? n - 5 : 1)),$((n + 60))p" "$run/console.log" >&2
    } || true
    status="kernel-report"
    [[ $rc -eq 0 ]] && rc=1
fi

[[ $status == ok && $rc -ne 0 ]] && status="command failed"
mw_log "guest exit status $rc ($status) after $took s; run dir $run"
if [[ $rc -eq 0 && $keep -eq 0 ]]; then
    rm -rf "$run"
fi
exit "$rc"
