#!/usr/bin/env bash
# Usage: ci/build-kernel.sh [--source patched|stock-6.1] [--variant fast|debug]
#                           [--print-tree | --print-headers | --print-env] [--clean]
#
# Builds the memwatch guest kernel: Debian's pristine linux-source-6.12 + the patches listed
# in linux/series (applied in order, each dry-run first), configured as
# `make tinyconfig` + linux/memwatch.config (+ linux/debug.config for --variant debug),
# and prints the path of the bzImage as the LAST line of stdout (everything else goes to
# stderr; the full make output goes to a log file under the cache).
#
#   --source patched    (default, or $MEMWATCH_SOURCE) linux-source-6.12 + linux/series
#   --source stock-6.1  Debian 12's own linux-source-6.1, no patch: the kernel most users run
#                       (same config fragments; cached as stock-6.1-VARIANT-KEY)
#   --variant fast   (default, or $MEMWATCH_VARIANT) plain kernel
#   --variant debug  + KASAN, lockdep, DEBUG_VM, DEBUG_ATOMIC_SLEEP (linux/debug.config)
#   --print-tree     print the patched source tree instead (to build the selftest)
#   --print-headers  print the installed uapi headers dir (make headers_install) instead
#   --print-env      print KERNEL=, TREE=, HEADERS=, BUILD=, CONFIG=, KEY= lines instead
#   --print-key      print the cache key (variant-sha) and exit without building
#   --is-cached      exit 0 if this variant is already built for the current inputs, else 1
#   --clean          drop this variant's object dir first (ccache still makes it quick)
#
# Cache: ${MEMWATCH_CACHE:-~/.cache/memwatch}, keyed by sha256 of (series, patches, config
# fragments, source package version, variant, gcc, RECIPE): an unchanged re-run just prints
# the cached result. Installs missing Debian packages itself. One build at a time (flock).
set -euo pipefail

MW_PROG="build-kernel"
# Part of the cache key: bump it when a change here changes what gets built.
RECIPE=1
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# All in one function: bash reads it whole, so editing this file cannot break a running build.
main() {
    variant=${MEMWATCH_VARIANT:-fast}
    source_name=${MEMWATCH_SOURCE:-patched}
    print=kernel
    clean=0
    while [[ $# -gt 0 ]]; do
        case $1 in
            --variant) variant=${2:?--variant needs fast or debug}; shift 2 ;;
            --variant=*) variant=${1#*=}; shift ;;
            --source) source_name=${2:?--source needs patched or stock-6.1}; shift 2 ;;
            --source=*) source_name=${1#*=}; shift ;;
            --print-tree) print=tree; shift ;;
            --print-headers) print=headers; shift ;;
            --print-env) print="env"; shift ;;
            --print-key) print="key"; shift ;;
            --is-cached) print="is-cached"; shift ;;
            --clean) clean=1; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
            *) mw_die "unknown argument '$1' (see --help)" ;;
        esac
    done
    case $variant in fast|debug) ;; *) mw_die "--variant must be fast or debug, not '$variant'" ;; esac
    mw_select_source "$source_name"
    # Cache/work name: the patched kernel keeps its historical names (fast-KEY, work/fast).
    name=$variant
    [[ $MW_SOURCE == patched ]] || name=$MW_SOURCE-$variant

    linux_dir=$MW_REPO/linux
    series=$linux_dir/series
    fragments=("$linux_dir/memwatch.config")
    [[ $variant == debug ]] && fragments+=("$linux_dir/debug.config")
    for f in "${fragments[@]}"; do [[ -f $f ]] || mw_die "missing config fragment $f"; done

    mkdir -p "$MW_CACHE"
    t_start=$(mw_now)
    mw_ensure_build_deps

    # --- the patch series -------------------------------------------------------------------
    local patch_list=
    [[ $MW_SOURCE == patched ]] && patch_list=$(mw_series_patches)
    patches=()
    [[ -n $patch_list ]] && mapfile -t patches <<<"$patch_list"
    if [[ $MW_SOURCE != patched ]]; then
        mw_log "building Debian's stock $MW_SRC_PACKAGE (no memwatch patches)"
    elif [[ ${#patches[@]} -eq 0 ]]; then
        mw_log "linux/series is missing or empty: building the pristine 6.12 tree (no memwatch patches)"
    fi

    # --- cache key --------------------------------------------------------------------------
    src_version=$(mw_src_version)
    key=$(
        {
            echo "variant=$variant"
            echo "source=$MW_SRC_PACKAGE $src_version"
            echo "gcc=$(gcc --version | head -n1)"
            echo "recipe=$RECIPE"
            # (the stock kernel's key leaves the series out: a patch change does not rebuild it)
            [[ $MW_SOURCE == patched && -f $series ]] && { echo "series:"; cat "$series"; }
            for p in "${patches[@]}"; do echo "patch ${p##*/}"; sha256sum <"$p"; done
            for f in "${fragments[@]}"; do echo "fragment ${f##*/}"; sha256sum <"$f"; done
        } | sha256sum | cut -c1-16
    )
    if [[ $print == key ]]; then echo "$name-$key"; exit 0; fi
    if [[ $print == is-cached ]]; then [[ -f $MW_CACHE/out/$name-$key/.done ]]; exit; fi
    out=$MW_CACHE/out/$name-$key
    work=$MW_CACHE/work/$name
    src=$work/src
    build=$work/build
    pristine=
    mkdir -p "$MW_CACHE/logs" "$work"
    log=/dev/null

    # --- pristine tree (extracted once) -----------------------------------------------------
    extract_pristine() { pristine=$(mw_pristine_tree); }

    # Files a patch touches (paths relative to the tree), from its ---/+++ headers.
    patch_files() {
        sed -n -e 's,^--- a/\([^[:space:]]*\).*,\1,p' -e 's,^+++ b/\([^[:space:]]*\).*,\1,p' "$1" | sort -u
    }

    # --- patched tree: hard-linked copy of the pristine tree + the series ---------------------
    prepare_tree() {
        if [[ -f $work/src.key && $(cat "$work/src.key") == "$key" && -d $src ]]; then
            return 0
        fi
        local t0
        t0=$(mw_now)
        rm -rf "$src" "$work/src.key"
        cp -al "$pristine" "$src"
        local touched=() p f n=0
        for p in "${patches[@]}"; do
            n=$((n + 1))
            # Break the hard links of the files this patch modifies, so the pristine tree stays intact.
            while IFS= read -r f; do
                [[ -z $f ]] && continue
                if [[ -f $src/$f ]]; then
                    cp -p "$src/$f" "$src/$f.mw-unlink" && mv -f "$src/$f.mw-unlink" "$src/$f"
                fi
                touched+=("$f")
            done < <(patch_files "$p")
            local msg
            if ! msg=$(cd "$src" && patch -p1 -f -s --dry-run --no-backup-if-mismatch <"$p" 2>&1); then
                rm -f "$work/src.key"
                mw_die "patch $n/${#patches[@]} ${p##*/} does not apply to $MW_SRC_PACKAGE $src_version (on top of patches 1..$((n - 1))):"$'\n'"$msg"
            fi
            if ! msg=$(cd "$src" && patch -p1 -f -s --no-backup-if-mismatch <"$p" 2>&1); then
                rm -f "$work/src.key"
                mw_die "patch $n/${#patches[@]} ${p##*/} failed to apply (dry run passed):"$'\n'"$msg"
            fi
            mw_log "applied ${p##*/}"
        done
        # Files patched by the previous series now have their pristine mtime again: touch them (and
        # this series' files) so make rebuilds whatever depends on them in the kept object dir.
        if [[ -f $work/touched-files ]]; then
            while IFS= read -r f; do touched+=("$f"); done <"$work/touched-files"
        fi
        : >"$work/touched-files.new"
        for f in "${touched[@]}"; do
            echo "$f" >>"$work/touched-files.new"
            if [[ -f $src/$f ]]; then
                cp -p "$src/$f" "$src/$f.mw-unlink" && mv -f "$src/$f.mw-unlink" "$src/$f"
                touch "$src/$f"
            fi
        done
        sort -u "$work/touched-files.new" >"$work/touched-files"
        rm -f "$work/touched-files.new"
        echo "$key" >"$work/src.key"
        mw_log "patched tree ready in $(mw_elapsed "$t0") s: $src (${#patches[@]} patches)"
    }

    kmake() {
        # nice: the machine's 2 cores are shared with test runs and other builds.
        nice -n 10 make -C "$src" O="$build" ARCH=x86_64 \
            CC="ccache gcc" HOSTCC="ccache gcc" \
            KBUILD_BUILD_USER=memwatch KBUILD_BUILD_HOST=ci KBUILD_BUILD_TIMESTAMP="memwatch $key" \
            "$@" >>"$log" 2>&1
    }

    # Fails listing every fragment line that olddefconfig did not keep.
    validate_config() {
        local cfg=$1 f line sym missing=()
        for f in "${fragments[@]}"; do
            while IFS= read -r line || [[ -n $line ]]; do
                if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
                    grep -qxF -- "$line" "$cfg" || missing+=("$line   (${f##*/}; got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" "$cfg" || echo unset))")
                elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
                    sym=${BASH_REMATCH[1]}
                    if grep -qE "^$sym=" "$cfg"; then
                        missing+=("$line   (${f##*/}; got: $(grep -E "^$sym=" "$cfg"))")
                    fi
                fi
            done <"$f"
        done
        if [[ ${#missing[@]} -gt 0 ]]; then
            printf '  %s\n' "${missing[@]}" >&2
            mw_die "${#missing[@]} requested config option(s) were dropped by olddefconfig (missing dependencies?): see above; .config: $cfg"
        fi
    }

    configure() {
        mkdir -p "$build"
        local old=$build/.config.mw-previous
        [[ -f $build/.config ]] && cp -p "$build/.config" "$old"
        kmake tinyconfig || { tail -n 30 "$log" >&2; mw_die "make tinyconfig failed (log: $log)"; }
        (cd "$build" && "$src/scripts/kconfig/merge_config.sh" -m -O "$build" "$build/.config" "${fragments[@]}") >>"$log" 2>&1 \
            || { tail -n 30 "$log" >&2; mw_die "merge_config.sh failed (log: $log)"; }
        kmake olddefconfig || { tail -n 30 "$log" >&2; mw_die "make olddefconfig failed (log: $log)"; }
        validate_config "$build/.config"
        # Unchanged config: keep the old file (and its mtime) so make does not re-sync for nothing.
        if [[ -f $old ]] && cmp -s "$old" "$build/.config"; then
            mv -f "$old" "$build/.config"
        else
            rm -f "$old"
        fi
    }

    emit() {
        local kernel=$out/bzImage
        case $print in
            kernel) echo "$kernel" ;;
            tree) echo "$src" ;;
            headers) echo "$out/usr/include" ;;
            env) cat "$out/env" ;;
        esac
    }

    # Cached: no lock needed (results are published by an atomic rename).
    if [[ -f $out/.done && ( $print != tree || ( -f $work/src.key && $(cat "$work/src.key") == "$key" ) ) ]]; then
        mw_log "cached $name kernel (key $key), $(mw_elapsed "$t_start") s"
        emit
        exit 0
    fi

    # One build (or tree preparation) at a time: 2 cores.
    exec 9>"$MW_CACHE/build.lock"
    if ! flock -n 9; then
        mw_log "another kernel build holds $MW_CACHE/build.lock; waiting"
        flock 9
    fi
    if [[ -f $out/.done ]]; then
        if [[ $print == tree ]]; then
            extract_pristine
            prepare_tree
        fi
        mw_log "cached $name kernel (key $key), $(mw_elapsed "$t_start") s"
        emit
        exit 0
    fi

    log=$MW_CACHE/logs/build-$name-$(date +%Y%m%d-%H%M%S).log
    : >"$log"
    mw_log "building $name kernel, key $key, log: $log"
    extract_pristine
    [[ $clean -eq 1 ]] && { mw_log "--clean: removing $build"; rm -rf "$build"; }
    prepare_tree

    export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/memwatch/ccache}
    export CCACHE_BASEDIR=$work CCACHE_NOHASHDIR=1 CCACHE_MAXSIZE=${CCACHE_MAXSIZE:-5G}
    ccache -z >/dev/null 2>&1 || true

    t0=$(mw_now)
    configure
    mw_log "configured in $(mw_elapsed "$t0") s"

    t0=$(mw_now)
    jobs=$(nproc)
    if ! kmake -j"$jobs" bzImage; then
        grep -E 'error|Error' "$log" | head -n 40 >&2 || true
        tail -n 20 "$log" >&2
        mw_die "kernel build failed (full log: $log)"
    fi
    mw_log "bzImage built in $(mw_elapsed "$t0") s ($(ccache -s 2>/dev/null | grep -iE 'hits|misses' | tr -s ' ' | paste -sd' ' -))"

    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    kmake headers_install INSTALL_HDR_PATH="$out.tmp/usr" || { tail -n 20 "$log" >&2; mw_die "headers_install failed (log: $log)"; }
    cp "$build/arch/x86/boot/bzImage" "$build/.config" "$build/System.map" "$out.tmp/"
    mv "$out.tmp/.config" "$out.tmp/config"
    {
        echo "KERNEL=$out/bzImage"
        echo "TREE=$src"
        echo "HEADERS=$out/usr/include"
        echo "BUILD=$build"
        echo "CONFIG=$out/config"
        echo "VMLINUX=$build/vmlinux"
        echo "KEY=$name-$key"
    } >"$out.tmp/env"
    cp "$log" "$out.tmp/build.log"
    touch "$out.tmp/.done"
    rm -rf "$out"
    mv "$out.tmp" "$out"
    ln -sfn "$out" "$MW_CACHE/out/$name-latest"
    mw_log "done: $name kernel $(du -h "$out/bzImage" | cut -f1) in $(mw_elapsed "$t_start") s total"
    emit
}

main "$@"
