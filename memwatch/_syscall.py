"""The bare ``process_memwatch(2)`` system call."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Final, Protocol

from . import _memwatch
from ._common import Flags

if TYPE_CHECKING:
    from typing_extensions import Buffer

__all__ = ["PIDFD_SELF", "process_memwatch"]

#: Names the calling process in place of a pidfd: ``PIDFD_SELF_THREAD`` (-10000)
#: of ``<linux/pidfd.h>``, mainline's ``PIDFD_SELF``; the kernel also accepts
#: ``PIDFD_SELF_THREAD_GROUP`` (-10001).  Both name the caller's memory.
PIDFD_SELF: Final[int] = _memwatch.PIDFD_SELF

_ULONG_MAX: Final = (1 << 64) - 1
_UINT_MAX: Final = (1 << 32) - 1


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def process_memwatch(
    pidfd: int | _HasFileno,
    start: int,
    length: int,
    flags: Flags | int,
    vec: Buffer | None = None,
) -> int:
    """Call ``process_memwatch(2)`` (syscall 500); return the entry count.

    Args:
        pidfd: a pidfd (an int, or an object with ``fileno()`` such as
            :class:`memwatch.PidFd`), or :data:`memwatch.PIDFD_SELF`.
        start: page-aligned address in the target process.
        length: bytes; the kernel rounds it up to whole pages.
        flags: :class:`memwatch.Flags` (or the equivalent int).
        vec: ``None`` or a writable C-contiguous buffer of 8-byte items that
            receives the byte offsets (from *start*) of the dirty pages.

    Only types and ranges that cannot cross the C boundary are checked here
    (TypeError, ValueError, OverflowError); everything else is the kernel's to
    judge, and its errno comes back as OSError: ``ENOSYS`` where the kernel
    lacks the call, ``EINVAL``, ``EBADF``, ``ESRCH`` (ProcessLookupError),
    ``EACCES``/``EPERM`` (PermissionError), ``EFAULT``, ``EOPNOTSUPP``.
    """
    if not isinstance(pidfd, int):
        fileno = getattr(pidfd, "fileno", None)
        if fileno is None:
            raise TypeError(f"pidfd must be an int or have fileno(), not {pidfd!r}")
        pidfd = operator.index(fileno())
    for name, value, top in (
        ("start", start, _ULONG_MAX),
        ("length", length, _ULONG_MAX),
        ("flags", flags, _UINT_MAX),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, not {type(value).__name__}")
        if value < 0:
            raise ValueError(f"{name} must not be negative, got {value}")
        if value > top:
            raise OverflowError(f"{name} does not fit the system call: {value:#x}")
    return _memwatch.process_memwatch(pidfd, start, length, int(flags), vec)
