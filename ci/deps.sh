#!/usr/bin/env bash
# Install the Debian packages and Python tools the kernel build and the QEMU
# guest need.  Idempotent: a machine that has them all returns in a second.
set -euo pipefail

pkgs=(linux-source-6.12 qemu-system-x86 flex bison bc libelf-dev libssl-dev
      dwarves busybox-static ccache udev gcc g++ make perl)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("$p")
done
if ((${#missing[@]})); then
	echo "ci/deps.sh: installing ${missing[*]}" >&2
	apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
fi
command -v vng >/dev/null 2>&1 || python3 -m pip install -q virtme-ng >&2
