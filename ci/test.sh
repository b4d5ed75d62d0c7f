#!/usr/bin/env bash
# The one test command (README "Testing"):
#   1. the Python suite on the host (tests needing the patched kernel skip here), then a smoke
#      pass of benchmarks/ (one round each, smallest sizes: they cannot rot; ci/bench.sh runs them
#      for real),
#   2. checkpatch --strict on the kernel series,
#   3. build the patched kernel (cached under ~/.cache/memwatch),
#   4. the kernel selftests in a QEMU guest running that kernel (memwatch_test -m64/-m32,
#      and the kernel's own soft-dirty and pagemap_ioctl, to show no regression),
#   5. a short random-argument fuzz run (ci/fuzz.sh; a long one is run on demand),
#   6. the guest-only Python tests (-m guest) in the same kind of guest.
# Each stage prints its wall time ("== ... done in S s").
# Set MEMWATCH_SKIP_GUEST=1 to run only step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

# stage NAME CMD...: run one stage, print its wall time (also when it fails).
stage() {
	local name=$1 t0 rc=0
	shift
	echo "== $name" >&2
	t0=$(date +%s)
	"$@" || rc=$?
	echo "== $name: done in $(($(date +%s) - t0)) s (exit $rc)" >&2
	return "$rc"
}

guest_pytest() {
	# pytest exits 5 when it collected no test.  Only here is that
	# legitimate: -m guest selects nothing in a tree whose tests carry no
	# guest mark.  The host run below never gets this pass: a host suite that
	# collects nothing is broken.
	local rc=0
	"$@" || rc=$?
	if ((rc == 5)); then
		echo "ci/test.sh: no test is marked guest; guest stage empty" >&2
		return 0
	fi
	return "$rc"
}

# The Python of the README's first command (.venv/, with the test extra) when
# it exists, else python3; MEMWATCH_PYTHON overrides.  The suite tests this
# checkout, so the extension is built in place first (a no-op when up to date).
py=${MEMWATCH_PYTHON:-python3}
if [[ -z ${MEMWATCH_PYTHON:-} && -x .venv/bin/python3 ]]; then py=$PWD/.venv/bin/python3; fi
stage "host: build the extension in place ($py)" "$py" setup.py build_ext --inplace -q
stage "host: python suite" "$py" -m pytest -q -rs
stage "host: benchmarks smoke (one round each)" "$py" -m pytest -q -p no:cacheprovider benchmarks/ --benchmark-disable

if [[ ${MEMWATCH_SKIP_GUEST:-0} == 1 ]]; then
	echo "ci/test.sh: MEMWATCH_SKIP_GUEST=1, guest stages skipped" >&2
	exit 0
fi

stage "deps: Debian packages and virtme-ng (quick when present)" bash ci/deps.sh
stage "kernel: checkpatch --strict" bash ci/checkpatch.sh
stage "kernel: build (cached)" bash ci/build-kernel.sh >/dev/null
stage "guest: kernel selftests (memwatch_test, soft-dirty, pagemap_ioctl)" bash ci/selftest.sh
stage "guest: short fuzz run" bash ci/fuzz.sh --calls 3000
stage "guest: python tests marked 'guest'" guest_pytest bash ci/vm-run.sh -- env MEMWATCH_IN_GUEST=1 \
	"$py" -m pytest -q -rs -m guest -p no:cacheprovider
stage "guest 6.1: python suite on Debian's stock kernel (build cached; tests marked slow excluded)" bash ci/test-stock.sh
