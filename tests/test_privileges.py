"""Privilege drop: the userfaultfd mechanisms without CAP_SYS_PTRACE."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from binding_support import (
    skip_if_unavailable,
    uffd_kernel_mode,
)

UNPRIV_SCRIPT = textwrap.dedent(
    """
    import ctypes, errno, mmap, os, sys, array
    from memwatch import _memwatch as mw
    ps = mw.PAGE_SIZE
    res = {}
    for cls in (mw.PagemapScanTracker, mw.UffdTracker):
        m = mmap.mmap(-1, 4 * ps)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        t = cls()
        t.attach(addr, 4 * ps)
        m[0] = 1
        r, w = os.pipe()
        os.write(w, b"k" * 10)
        try:
            os.readv(r, [memoryview(m)[2 * ps:2 * ps + 10]])
            kernel = "ok"
        except OSError as e:
            kernel = errno.errorcode[e.errno]
        out = array.array("Q", [0] * 4)
        n = t.scan(addr, 4 * ps, out, True)
        res[t.name] = (kernel, [o // ps for o in out[:n]])
        t.detach()
    print(res)
    """
)


def test_without_cap_sys_ptrace_user_mode_only() -> None:
    """vm.unprivileged_userfaultfd=0 and no CAP_SYS_PTRACE: both uffd
    mechanisms fall back to UFFD_USER_MODE_ONLY.  Async WP (pagemap_scan)
    still tracks kernel writes; the sync handler cannot serve kernel-mode
    faults, so a read(2) into a clean page fails with EFAULT (documented on
    UffdTracker)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux setpriv to drop CAP_SYS_PTRACE")
    if not uffd_kernel_mode() or Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "1":
        pytest.skip("vm.unprivileged_userfaultfd=1: no fallback to exercise")
    for name in ("pagemap_scan", "uffd"):
        skip_if_unavailable(name)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([setpriv, "--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace",
                        sys.executable, "-c", UNPRIV_SCRIPT], capture_output=True, text=True,
                       timeout=60, env=env, cwd="/", check=False)
    assert p.returncode == 0, p.stderr
    res = eval(p.stdout)
    assert res["pagemap_scan"] == ("ok", [0, 2])
    assert res["uffd"] == ("EFAULT", [0])


def test_backends_table_is_honest_without_cap_sys_ptrace() -> None:
    """Newcomer W7: without CAP_SYS_PTRACE (vm.unprivileged_userfaultfd=0)
    `python -m memwatch backends` said uffd kernel_writes=yes, while a read(2)
    into a uffd-watched page failed with EFAULT (the test above)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux setpriv to drop CAP_SYS_PTRACE")
    if not uffd_kernel_mode() or Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "1":
        pytest.skip("vm.unprivileged_userfaultfd=1: no fallback to exercise")
    skip_if_unavailable("uffd")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p = subprocess.run([setpriv, "--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace",
                        sys.executable, "-m", "memwatch", "backends"], capture_output=True,
                       text=True, timeout=60, env=env, cwd="/", check=False)
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines()[1:]}
    header = p.stdout.splitlines()[0].split()
    col = header.index("kernel_writes")
    assert rows["uffd"][col] == "no", p.stdout

