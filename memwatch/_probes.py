"""Why a backend is unavailable, in words a user can act on.

The C++ probes (``_memwatch.<name>_available()``) return ``(ok, code, errno)``:
a short stable code naming what was missing and the errno behind it.  This
module is the one place that turns them into the sentences shown by
:func:`memwatch.backends`, ``python -m memwatch backends`` and
:class:`memwatch.UnsupportedError` -- as psutil keeps policy and wording in
Python and lets C report facts.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from typing import Final

__all__ = ["explain", "run"]

_UFFD_OPEN: Final[dict[int, str]] = {
    errno.ENOSYS: "userfaultfd() is not available: the kernel was built without "
    "CONFIG_USERFAULTFD (or a seccomp filter blocks it)",
    errno.EPERM: "userfaultfd() was refused: vm.unprivileged_userfaultfd is 0 and the "
    "process lacks CAP_SYS_PTRACE (run as root, grant CAP_SYS_PTRACE, or set "
    "sysctl vm.unprivileged_userfaultfd=1)",
    errno.EMFILE: "userfaultfd() failed: too many open files",
    errno.ENFILE: "userfaultfd() failed: too many open files in the system",
}

_PATCHED: Final = (
    "a kernel built with the process_memwatch patch series (linux/ in the "
    "memwatch sources)"
)

# (backend, code) -> words; "{err}" is the strerror of the probe's errno.
_TEXT: Final[dict[tuple[str, str], str]] = {
    ("syscall", "enosys"): "process_memwatch(2) is not in this kernel: stock kernels "
    f"lack it; it needs {_PATCHED}, built with CONFIG_MEM_SOFT_DIRTY",
    # Kernels of the v2 series answered EOPNOTSUPP without soft-dirty; v3 says ENOSYS.
    ("syscall", "no_soft_dirty"): "process_memwatch(2) is present but the kernel was "
    "built without CONFIG_MEM_SOFT_DIRTY",
    ("softdirty", "no_clear_refs"): "/proc/self/clear_refs is not writable ({err}); "
    "needs CONFIG_PROC_PAGE_MONITOR and a mounted /proc",
    ("softdirty", "no_soft_dirty"): "the kernel does not track soft-dirty bits (built "
    "without CONFIG_MEM_SOFT_DIRTY; most x86_64 distribution kernels have it, this "
    "one does not)",
    ("pagemap_scan", "no_pagemap"): "cannot open /proc/self/pagemap ({err}); needs "
    "CONFIG_PROC_PAGE_MONITOR and a mounted /proc",
    ("pagemap_scan", "no_wp_async"): "userfaultfd lacks UFFD_FEATURE_WP_ASYNC (needs "
    "Linux 6.7+ built with CONFIG_PTE_MARKER_UFFD_WP)",
    ("pagemap_scan", "no_wp_unpopulated"): "userfaultfd lacks "
    "UFFD_FEATURE_WP_UNPOPULATED (needs Linux 6.4+)",
    ("pagemap_scan", "no_pagemap_scan"): "the PAGEMAP_SCAN ioctl is missing (needs "
    "Linux 6.7+): {err}",
    ("pagemap_scan", "scan_mismatch"): "PAGEMAP_SCAN did not report a page written "
    "after write-protection (a kernel bug or an unexpected configuration)",
    ("uffd", "no_wp"): "userfaultfd lacks write-protect support "
    "(UFFD_FEATURE_PAGEFAULT_FLAG_WP: Linux 5.7+ with CONFIG_HAVE_ARCH_USERFAULTFD_WP)",
    ("uffd", "no_wp_unpopulated"): "userfaultfd lacks UFFD_FEATURE_WP_UNPOPULATED "
    "(needs Linux 6.4+): first writes to untouched pages would be missed",
}


def _strerror(err: int) -> str:
    return os.strerror(err) if err else "unknown error"


def explain(name: str, code: str, err: int) -> str:
    """The sentence for a failed probe of backend *name*."""
    if code == "uffd_open":
        return _UFFD_OPEN.get(err, f"userfaultfd() failed: {_strerror(err)}")
    text = _TEXT.get((name, code))
    if text is not None:
        return text.format(err=_strerror(err))
    # "failed" and any code this table does not know yet.
    return f"{name} probe failed: {_strerror(err)}"


def run(name: str, probe: Callable[[], tuple[bool, str, int]]) -> tuple[bool, str]:
    """Run a C++ probe: ``(True, "")`` or ``(False, why)``; never raises OSError."""
    try:
        ok, code, err = probe()
    except OSError as e:  # a probe should not raise; never let one escape
        return False, f"{name} probe failed: {e}"
    if ok:
        return True, ""
    return False, explain(name, code, err)
