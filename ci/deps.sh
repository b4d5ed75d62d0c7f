#!/usr/bin/env bash
# Install what the kernel build, the selftest and the QEMU guest need on the
# host: Debian packages and virtme-ng (ci/lib.sh).  Idempotent: a machine that
# has them all returns in about a second.
set -euo pipefail

MW_PROG="deps"
# shellcheck source=ci/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mw_ensure_build_deps
mw_ensure_vm_deps
