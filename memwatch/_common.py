"""Vocabulary shared by every layer of the facade: flags and errors.

Nothing here touches the extension, so these names import on any machine.
"""

from __future__ import annotations

import enum
import errno
from collections.abc import Mapping
from typing import Any

__all__ = ["CapabilityError", "Flags", "UnsupportedError"]

# The errnos with which a kernel interface says "part of this range is not
# mapped" (UFFDIO_REGISTER/WRITEPROTECT: EINVAL/ENOENT, mprotect: ENOMEM,
# PAGEMAP_SCAN: EFAULT/EINVAL).
_UNMAPPED_ERRNOS = frozenset({errno.EINVAL, errno.ENOMEM, errno.ENOENT, errno.EFAULT})


class Flags(enum.IntFlag):
    """The ``flags`` argument of :func:`memwatch.process_memwatch`.

    The values are those of ``linux/memwatch.h`` (``MEMWATCH_SD_*``).
    """

    SD_GET = 0x1
    SD_CLEAR = 0x2
    SD_NO_REUSED_REGIONS = 0x4


class UnsupportedError(OSError):
    """No tracking mechanism here can do what was asked.

    Raised when ``backend="auto"`` finds no usable backend, when a named
    backend is unavailable or lacks a capability (watching another process),
    and when an operation would need a capability the chosen backend lacks
    (a partial reset with ``softdirty``, which can only clear the whole
    process: memwatch refuses rather than clear more than asked).

    It is an :class:`OSError` (``errno`` ``EOPNOTSUPP``) because the cause is
    always the running system -- kernel configuration, sysctls, privileges --
    never a bug in the caller's arguments, and because it is the same
    condition that :func:`memwatch.process_memwatch` reports as
    ``OSError(ENOSYS)`` or ``OSError(EOPNOTSUPP)`` one layer down: code that
    already handles "the OS cannot do this" with ``except OSError`` keeps
    working.  ``str(err)`` is the message alone, naming what is missing.

    Attributes:
        requirement: what was asked for, in words ("watch another process").
        reasons: backend name -> why that backend could not do it.
    """

    requirement: str
    reasons: dict[str, str]

    def __init__(
        self,
        message: str,
        *,
        requirement: str = "",
        reasons: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(errno.EOPNOTSUPP, message)
        self.requirement = requirement
        self.reasons = dict(reasons or {})

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_unsupported,
            (type(self), str(self.strerror), self.requirement, self.reasons),
        )


def _rebuild_unsupported(
    cls: type[UnsupportedError], message: str, requirement: str, reasons: dict[str, str]
) -> UnsupportedError:
    # (The subclasses below take the same arguments.)
    return cls(message, requirement=requirement, reasons=reasons)


class CapabilityError(UnsupportedError, ValueError):
    """The backend named in ``backend=`` lacks, by design, a capability the
    call requires (``Watch(buf, backend="mprotect", kernel_writes=True)``,
    ``pid=`` with a backend that cannot watch another process).

    It is a :class:`ValueError` because the arguments contradict each other
    on every machine, and an :class:`UnsupportedError` (so an
    :class:`OSError`) like every other "this backend cannot" error, so that
    both ``except`` clauses catch it.  The message names the requirement and
    why that backend cannot meet it.
    """


UnsupportedError.__module__ = "memwatch"
CapabilityError.__module__ = "memwatch"
Flags.__module__ = "memwatch"


class _Vma:
    __slots__ = ("end", "path", "perms", "start")

    def __init__(self, start: int, end: int, perms: str, path: str) -> None:
        self.start, self.end, self.perms, self.path = start, end, perms, path


def _vmas(pid: int | None) -> list[_Vma] | None:
    """The mappings of *pid* (``None``: this process), ascending, from
    ``/proc/PID/maps``; ``None`` when they cannot be read."""
    path = "/proc/self/maps" if pid is None else f"/proc/{pid}/maps"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    vmas = []
    for line in lines:
        fields = line.split(maxsplit=5)
        lo, _, hi = fields[0].partition("-")
        vmas.append(_Vma(int(lo, 16), int(hi, 16), fields[1],
                         fields[5] if len(fields) > 5 else ""))
    return vmas


def unmapped_part(pid: int | None, start: int, length: int) -> tuple[int, int] | None:
    """The first hole ``(begin, end)`` of ``[start, start+length)`` in the
    mappings of *pid* (``None``: this process), or ``None`` when the range is
    entirely mapped -- or when the mappings cannot be read, since this only
    refines an error message and must never invent one."""
    vmas = _vmas(pid)
    if vmas is None:
        return None
    end = start + length
    pos = start
    for v in vmas:
        if v.end <= pos:
            continue
        if v.start > pos:
            return pos, min(v.start, end)
        pos = v.end
        if pos >= end:
            return None
    return (pos, end) if pos < end else None


def range_error(
    start: int, length: int, pid: int | None, hole: tuple[int, int]
) -> OSError:
    """``OSError(ENOMEM)`` naming the range and its first unmapped part.

    ENOMEM is what mprotect(2), madvise(2) and mincore(2) say for "not
    mapped", and what the mprotect tracker raises itself; the message says
    it in words instead of "Cannot allocate memory"."""
    where = "this process" if pid is None else f"process {pid}"
    return OSError(
        errno.ENOMEM,
        f"range {start:#x}+{length:#x} is not entirely mapped in {where} "
        f"({hole[0]:#x}..{hole[1]:#x} is not mapped)",
    )


# Shared memory (shmem/tmpfs), which userfaultfd write-protect does support.
_SHMEM_PATHS = ("/dev/zero", "/dev/shm/", "/memfd:", "/SYSV", "/anon_hugepage")


def shared_file_part(pid: int | None, start: int, length: int) -> str | None:
    """The path of a file-backed shared mapping overlapping the range, if any
    (what the synchronous userfaultfd write-protect cannot register)."""
    vmas = _vmas(pid)
    if vmas is None:
        return None
    end = start + length
    for v in vmas:
        if (v.start < end and v.end > start and "s" in v.perms and v.path.startswith("/")
                and not v.path.startswith(_SHMEM_PATHS)):
            return v.path
    return None
