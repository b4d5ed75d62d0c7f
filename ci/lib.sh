# shellcheck shell=bash
# shellcheck disable=SC2034  # variables used by the scripts that source this file
# Usage: source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"   (from the other ci/*.sh scripts)
#
# Shared helpers of the memwatch kernel harness: paths of the cache, logging, and the
# idempotent installation of the host tools (Debian packages + virtme-ng from PyPI).
# Not meant to be run on its own.

MW_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MW_CACHE=${MEMWATCH_CACHE:-$HOME/.cache/memwatch}
MW_SRC_TARBALL=/usr/src/linux-source-6.12.tar.xz
MW_SRC_PACKAGE=linux-source-6.12
# Kernel source the build starts from: "patched" = Debian's linux-source-6.12 + linux/series
# (the default); "stock-6.1" = Debian 12's own linux-source-6.1 with no memwatch patch, to
# test the package on the kernel most users run (no PAGEMAP_SCAN, no WP_UNPOPULATED, no syscall).
MW_SOURCE=patched
MW_SRC_SERIES=6.12
MW_VIRTME_NG_VERSION=1.42

mw_log() { printf '%s: %s\n' "${MW_PROG:-ci}" "$*" >&2; }
mw_die() { printf '%s: error: %s\n' "${MW_PROG:-ci}" "$*" >&2; exit 1; }

# Seconds since the epoch with a fraction, for timings.
mw_now() { date +%s.%N; }
mw_elapsed() { awk -v a="$1" -v b="$(mw_now)" 'BEGIN { printf "%.1f", b - a }'; }

# mw_ensure_debs PKG...: install the Debian packages that are missing (one apt-get update).
mw_ensure_debs() {
    local missing=() p
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    mw_log "installing Debian packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    "${sudo[@]}" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >&2
}

# Everything a kernel build and a virtme-ng guest need on the host.
mw_ensure_build_deps() {
    mw_ensure_debs "$MW_SRC_PACKAGE" make gcc libc6-dev xz-utils flex bison bc libelf-dev \
        libssl-dev dwarves ccache patch rsync
}

mw_ensure_vm_deps() {
    # udev: without it virtme-ng fails with "cannot find script I/O ports".
    mw_ensure_debs qemu-system-x86 busybox-static udev
    if ! command -v vng >/dev/null 2>&1; then
        mw_log "installing virtme-ng==$MW_VIRTME_NG_VERSION from PyPI"
        python3 -m pip install -q "virtme-ng==$MW_VIRTME_NG_VERSION" >&2
        hash -r
        command -v vng >/dev/null 2>&1 || mw_die "virtme-ng installed but 'vng' is not on PATH"
    fi
}

mw_src_version() { dpkg-query -W -f='${Version}' "$MW_SRC_PACKAGE"; }

# mw_select_source patched|stock-6.1: point MW_SRC_* at that source package (call before
# mw_ensure_build_deps / mw_pristine_tree).
mw_select_source() {
    case $1 in
        patched) MW_SRC_SERIES=6.12 ;;
        stock-6.1) MW_SRC_SERIES=6.1 ;;
        *) mw_die "--source must be patched or stock-6.1, not '$1'" ;;
    esac
    MW_SOURCE=$1
    MW_SRC_PACKAGE=linux-source-$MW_SRC_SERIES
    MW_SRC_TARBALL=/usr/src/$MW_SRC_PACKAGE.tar.xz
}

# mw_pristine_tree: extract the selected Debian linux-source-X.Y tarball once into the cache
# (checking that it is an X.Y.z tree) and print the tree's path. 6.12 keeps the historical
# location ($MW_CACHE/pristine: tests/test_uapi_headers.py looks there).
mw_pristine_tree() {
    local root=$MW_CACHE/pristine version
    [[ $MW_SRC_SERIES == 6.12 ]] || root=$MW_CACHE/pristine-$MW_SRC_SERIES
    version=$(mw_src_version)
    if [[ ! -f $root/.extracted || $(cat "$root/.extracted") != "$version" ]]; then
        [[ -f $MW_SRC_TARBALL ]] || mw_die "$MW_SRC_TARBALL missing (package $MW_SRC_PACKAGE)"
        mw_log "extracting $MW_SRC_TARBALL ($version) into $root"
        local t0 tmp=$root.tmp kv
        t0=$(mw_now)
        rm -rf "$root" "$tmp"
        mkdir -p "$tmp"
        tar -xf "$MW_SRC_TARBALL" -C "$tmp"
        [[ -d $tmp/$MW_SRC_PACKAGE ]] || mw_die "$MW_SRC_TARBALL has no $MW_SRC_PACKAGE/ directory"
        kv=$(make -s -C "$tmp/$MW_SRC_PACKAGE" kernelversion)
        [[ $kv == "$MW_SRC_SERIES".* ]] || mw_die "expected a $MW_SRC_SERIES.x tree, $MW_SRC_TARBALL has $kv"
        echo "$version" >"$tmp/.extracted"
        mv "$tmp" "$root"
        mw_log "extracted kernel $kv in $(mw_elapsed "$t0") s"
    fi
    echo "$root/$MW_SRC_PACKAGE"
}

# mw_series_patches: print the absolute paths of the patches listed in linux/series, in order
# (nothing if the file is missing or empty); fails if a listed patch does not exist.
mw_series_patches() {
    local series=$MW_REPO/linux/series line
    [[ -f $series ]] || return 0
    while IFS= read -r line || [[ -n $line ]]; do
        line=${line%%#*}
        line=${line#"${line%%[![:space:]]*}"}
        line=${line%"${line##*[![:space:]]}"}
        [[ -z $line ]] && continue
        [[ -f $MW_REPO/linux/$line ]] || mw_die "linux/series lists '$line' but linux/$line does not exist"
        echo "$MW_REPO/linux/$line"
    done <"$series"
}
