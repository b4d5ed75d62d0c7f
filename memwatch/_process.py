"""Other processes: pidfds, and resolving ``Watch(..., pid=...)``.

Split out of ``_watch.py``: a :class:`PidFd` wraps a pidfd the caller owns,
:func:`_resolve_process` turns whatever ``pid=`` was given into an owned
pidfd (:class:`_Process`) that fixes the target's identity for the life of
the Watch.
"""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["PidFd"]

_INT_MAX = (1 << 31) - 1  # a file descriptor or pid is a C int


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
        if not 0 <= fd <= _INT_MAX:
            raise ValueError(f"invalid file descriptor {fd}")
        self._fd = fd
        self._owned = _owned
        self.pid: int = _pid_of_pidfd(fd)

    @classmethod
    def open(cls, pid: int) -> PidFd:
        """``os.pidfd_open(pid)`` as an owning PidFd (close it, or use ``with``)."""
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid}")
        if pid > _INT_MAX:
            raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}")
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


class _Process:
    """Another process, held by a pidfd that this object owns.

    The pidfd fixes the identity when the Watch is created: the pid cannot be
    reused under the Watch.  It becomes readable when the process exits,
    which gives a cheap liveness check for the path-based ``softdirty``
    backend (``/proc/PID/pagemap`` of an exited process reads as empty).
    """

    __slots__ = ("_poll", "pid", "pidfd")

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self._poll = select.poll()
        self._poll.register(pidfd, select.POLLIN)

    def exited(self) -> bool:
        return bool(self._poll.poll(0))

    def check_alive(self) -> None:
        if self.exited():
            raise ProcessLookupError(errno.ESRCH, f"process {self.pid} has exited")

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


def _resolve_process(pid: object) -> _Process | None:
    """``None`` for this process, else an owned pidfd for the target.

    Accepted: ``None``; an int pid (never a file descriptor); a
    :class:`memwatch.PidFd`; any object with an int ``.pid`` attribute
    (``subprocess.Popen``, ``multiprocessing.Process``, ``psutil.Process``).
    The calling process's own pid means "this process".
    """
    if pid is None:
        return None
    if isinstance(pid, PidFd):
        fd = os.dup(pid.fileno())
        try:
            number = _pid_of_pidfd(fd)
        except BaseException:
            os.close(fd)
            raise
        if number == os.getpid():
            os.close(fd)
            return None
        return _Process(number, fd)
    handle: object = None
    if not isinstance(pid, int) and hasattr(pid, "pid"):
        handle, pid = pid, pid.pid
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise TypeError(
            "pid must be an int pid, a memwatch.PidFd or an object with a .pid "
            f"attribute, not {type(pid).__name__}"
        )
    if pid <= 0:
        raise ValueError(f"pid must be positive, got {pid}")
    if pid == os.getpid():
        return None
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}") from None
    except OverflowError:
        raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}") from None
    if handle is not None and _handle_exited(handle):
        # Its pid may already name another process: do not watch that one.
        os.close(fd)
        raise ProcessLookupError(errno.ESRCH, f"process {pid} has exited")
    return _Process(pid, fd)


def _handle_exited(handle: object) -> bool:
    """Whether a process object says its process is gone.

    Checked after the pidfd is open, so that a process object still alive at
    that moment proves the pidfd names its process and not a reuse of its pid:
    ``subprocess.Popen.returncode`` / ``multiprocessing.Process.exitcode`` are
    set once the child was reaped, ``psutil.Process.is_running()`` compares
    the creation time.
    """
    for attr in ("returncode", "exitcode"):
        if getattr(handle, attr, None) is not None:
            return True
    is_running = getattr(handle, "is_running", None)
    return callable(is_running) and not is_running()
