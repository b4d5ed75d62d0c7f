"""memwatch: which pages of memory were written, at full speed, on Linux.

Five mechanisms sit behind one API, tried in this order by ``backend="auto"``:

``syscall``
    ``process_memwatch(2)``, a patched kernel's system call (pidfd based;
    soft-dirty bits with an atomic get-and-clear; other processes too).
``pagemap_scan``
    userfaultfd write-protect in async mode plus the ``PAGEMAP_SCAN`` ioctl
    (Linux 6.7+); atomic, exact, sees kernel writes; this process only.
``uffd``
    synchronous userfaultfd write-protect with a handler thread.
``softdirty``
    ``/proc/PID/pagemap`` bit 55 and ``clear_refs``; needs
    ``CONFIG_MEM_SOFT_DIRTY``; other processes too; may report false
    positives; its reset is not atomic (a write between the pagemap read and
    the process-wide ``clear_refs`` is lost).
``mprotect``
    ``PROT_READ`` plus a SIGSEGV handler; works everywhere, but a kernel
    write into the buffer (``read()``) fails with ``EFAULT``.

That order is for a plain ``Watch(buf)``.  ``Watch(buf, atomic=...,
kernel_writes=..., partial_reset=...)`` says what the Watch needs (True:
required, False: not needed, so a cheaper backend may do); ``memwatch info``
explains the choice.

Quick start::

    import memwatch
    buf = bytearray(1 << 20)
    with memwatch.Watch(buf) as w:
        buf[5000] = 1
        print(w.backend, list(w.dirty(reset=True)))   # offsets from w.address

Offsets are bytes from ``Watch.address``, the page-aligned start of the
watched range (``Watch.target_offset`` is where the target itself begins).
"""

from __future__ import annotations

import os as _os

from ._backends import Backend, backends
from ._common import CapabilityError, Flags, UnsupportedError
from ._process import PidFd
from ._syscall import PIDFD_SELF, process_memwatch
from ._watch import PAGE_SIZE, Watch
from ._winapi import WatchedMapping, alloc, get_write_watch, reset_write_watch

__version__ = "0.1.0"


def get_include() -> str:
    """The folder to pass to the compiler (``-I``) for the C API header,
    ``#include <memwatch/memwatch_capi.h>`` (README "For C and C++
    extensions")."""
    return _os.path.join(_os.path.dirname(__file__), "include")


__all__ = [
    "PAGE_SIZE",
    "PIDFD_SELF",
    "Backend",
    "CapabilityError",
    "Flags",
    "PidFd",
    "UnsupportedError",
    "Watch",
    "WatchedMapping",
    "alloc",
    "backends",
    "get_include",
    "get_write_watch",
    "process_memwatch",
    "reset_write_watch",
]

for _name in ("Backend", "Watch", "backends", "process_memwatch", "alloc",
              "get_write_watch", "reset_write_watch"):
    globals()[_name].__module__ = __name__
del _name
