"""Vocabulary shared by every layer of the facade: flags, errors, pidfds.

Nothing here touches the extension, so these names import on any machine.
"""

from __future__ import annotations

import enum
import errno
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Flags", "PidFd", "UnsupportedError"]


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
            (str(self.strerror), self.requirement, self.reasons),
        )


def _rebuild_unsupported(
    message: str, requirement: str, reasons: dict[str, str]
) -> UnsupportedError:
    return UnsupportedError(message, requirement=requirement, reasons=reasons)


UnsupportedError.__module__ = "memwatch"
Flags.__module__ = "memwatch"


def _pid_of_pidfd(fd: int) -> int:
    """The pid a pidfd refers to, from ``/proc/self/fdinfo`` (Linux 5.10+).

    Raises ValueError when *fd* is not a pidfd and ProcessLookupError when
    the process it refers to has already exited (fdinfo says ``Pid: -1``).
    """
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise OSError(errno.EBADF, f"file descriptor {fd} is not open") from None
    for line in lines:
        if line.startswith("Pid:"):
            pid = int(line.split()[1])
            if pid <= 0:
                raise ProcessLookupError(
                    errno.ESRCH, f"the process of pidfd {fd} has exited"
                )
            return pid
    raise ValueError(f"file descriptor {fd} is not a pidfd")


class PidFd:
    """A pidfd naming another process, for ``Watch(..., pid=PidFd(fd))``.

    A pid and a file descriptor are both ints, so memwatch never guesses: an
    int passed as ``pid=`` is always a process id, and a pidfd (from
    :func:`os.pidfd_open`, ``CLONE_PIDFD`` or ``pidfd_getfd``) is wrapped in
    this class.  A pidfd names exactly one process for its whole life, so it
    is immune to pid reuse; :class:`memwatch.Watch` duplicates it, and the
    caller stays free to close its own descriptor.

    ``PidFd(fd)`` does not take ownership of *fd*; :meth:`open` returns an
    owning instance whose :meth:`close` closes it.
    """

    __slots__ = ("_fd", "_owned", "pid")

    def __init__(self, fd: int, *, _owned: bool = False) -> None:
        if isinstance(fd, bool) or not isinstance(fd, int):
            raise TypeError(f"a pidfd is an int file descriptor, not {fd!r}")
        if fd < 0:
            raise ValueError(f"invalid file descriptor {fd}")
        self._fd = fd
        self._owned = _owned
        self.pid: int = _pid_of_pidfd(fd)

    @classmethod
    def open(cls, pid: int) -> PidFd:
        """``os.pidfd_open(pid)`` as an owning PidFd (close it, or use ``with``)."""
        fd = os.pidfd_open(pid)
        try:
            return cls(fd, _owned=True)
        except BaseException:
            os.close(fd)
            raise

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("operation on a closed PidFd")
        return self._fd

    def close(self) -> None:
        if self._owned and self._fd >= 0:
            os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"memwatch.PidFd(fd={self._fd}, pid={self.pid})"


PidFd.__module__ = "memwatch"
