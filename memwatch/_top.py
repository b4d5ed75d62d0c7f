"""Write rates of a whole process, mapping by mapping.

The engine behind ``memwatch watch PID`` and its Prometheus exporter: a
:class:`ProcessWatcher` re-reads ``/proc/PID/maps`` at every
:meth:`~ProcessWatcher.sample`, opens a :class:`memwatch.Watch` on each
writable mapping it has not seen yet, closes the Watches of mappings that
went away, and collects (with reset) the pages written in each one since the
previous sample.

A mapping is identified by its start, end, offset, inode and name: one that
grows or shrinks (``[heap]`` after ``brk()``) is a new mapping.  A new
mapping is counted from the sample that first sees it: the writes made to it
before that (it did not exist, or memwatch did not know it yet) are not
counted, and neither are the writes made to a mapping in the interval in
which it is unmapped.  That is a limit of looking at a process from outside
through ``/proc/PID/maps`` at intervals, not a lost write of a Watch.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import select
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from . import _backends
from ._common import UnsupportedError
from ._watch import PAGE_SIZE, Watch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Mapping", "MappingSample", "ProcessSample", "ProcessWatcher", "read_maps"]

# Special mappings no process writes through its page tables (or that
# cannot be watched at all).
_SPECIAL: Final = frozenset({"[vvar]", "[vvar_vclock]", "[vdso]", "[vsyscall]", "[uprobes]"})


@dataclasses.dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps``."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    @property
    def name(self) -> str:
        """The path, ``[heap]``, ``[stack]``, ... or ``[anon]``."""
        return self.path or "[anon]"

    @property
    def writable(self) -> bool:
        return "w" in self.perms and self.path not in _SPECIAL


def _parse_maps_line(line: str) -> Mapping:
    # "start-end perms offset dev inode   path" (path may hold spaces, or
    # end in " (deleted)").
    fields = line.rstrip("\n").split(None, 5)
    start, _, end = fields[0].partition("-")
    path = fields[5] if len(fields) > 5 else ""
    return Mapping(int(start, 16), int(end, 16), fields[1], int(fields[2], 16),
                   int(fields[4]), path)


def read_maps(pid: int) -> list[Mapping]:
    """The mappings of process *pid* (ProcessLookupError once it is gone)."""
    try:
        with open(f"/proc/{pid}/maps") as f:
            return [_parse_maps_line(line) for line in f if line.strip()]
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(errno.ESRCH, f"process {pid} has exited") from None


def read_command(pid: int) -> str:
    """``/proc/PID/comm`` (the name ps shows), or ``"?"``."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


@dataclasses.dataclass(frozen=True)
class MappingSample:
    """Pages written to one mapping in one interval."""

    mapping: Mapping
    pages: int


@dataclasses.dataclass(frozen=True)
class ProcessSample:
    """What one :meth:`ProcessWatcher.sample` saw.

    Attributes:
        pid, command: the process.
        time: ``time.time()`` at the end of the sample.
        interval: seconds since the previous sample (since the watcher was
            created for the first one).
        mappings: every watched mapping, busiest first (ties by address).
        appeared, gone: mappings first watched in this sample, and mappings
            that were unmapped since the previous one.
        scan_seconds: the time spent collecting dirty pages in this sample.
        errors: one line per mapping that could not be watched or scanned.
        exited: the process is gone (this is its last sample).
    """

    pid: int
    command: str
    time: float
    interval: float
    mappings: list[MappingSample]
    appeared: list[Mapping]
    gone: list[Mapping]
    scan_seconds: float
    errors: list[str]
    exited: bool

    @property
    def pages(self) -> int:
        return sum(m.pages for m in self.mappings)


def _key(m: Mapping) -> tuple[int, int, int, int, str]:
    return (m.start, m.end, m.offset, m.inode, m.path)


class ProcessWatcher:
    """Watch every writable mapping of process *pid*.

    *backend* is ``"auto"`` or a backend name; for another process only the
    remote backends (``syscall``, ``softdirty``) can work, and the
    constructor raises :class:`memwatch.UnsupportedError` saying why when
    none can.  *only* keeps only the mappings it returns True for (the
    writable ones are always the only candidates).  The pid is pinned with a
    pidfd at once: a reused pid is never watched by mistake.
    """

    def __init__(
        self,
        pid: int,
        *,
        backend: str = "auto",
        only: Callable[[Mapping], bool] | None = None,
    ) -> None:
        self.pid = pid
        self._self = pid == os.getpid()
        # Says why, before anything is opened, when nothing can do it.
        self.backend = _backends.choose(backend, remote=not self._self).name
        self._requested = backend
        self._only = only
        self._pidfd = -1
        if not self._self:
            try:
                self._pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}") from None
            except OSError as e:
                # pidfd_open() refuses a thread that is not its group's
                # leader (EINVAL, ENOENT on 6.9+).
                if e.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
                tgid = _thread_group(pid)
                if tgid is None or tgid == pid:
                    raise ProcessLookupError(errno.ESRCH, f"no process with pid {pid}") from None
                raise ValueError(
                    f"{pid} is a thread of process {tgid}, not a process: watch {tgid} "
                    "(threads share their process's memory)"
                ) from None
        self.command = read_command(pid)
        self._watches: dict[tuple[int, int, int, int, str], tuple[Mapping, Watch]] = {}
        # Mappings a Watch could not be opened on: reported once, not retried
        # every sample (forgotten when the mapping goes away).
        self._failed: set[tuple[int, int, int, int, str]] = set()
        self._last = time.monotonic()
        self.exited = False
        # Totals since the watcher started (the Prometheus counters).
        self.total_scan_seconds = 0.0
        self.total_samples = 0
        self.total_errors = 0

    def _alive(self) -> bool:
        if self._self:
            return True
        if self._pidfd < 0:
            return False
        # A pidfd polls readable once its process has exited.
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)

    def _wanted(self, maps: list[Mapping]) -> dict[tuple[int, int, int, int, str], Mapping]:
        return {
            _key(m): m
            for m in maps
            if m.writable and (self._only is None or self._only(m))
        }

    def sample(self) -> ProcessSample:
        """Collect the pages written since the previous sample, per mapping."""
        now = time.monotonic()
        interval, self._last = now - self._last, now
        errors: list[str] = []
        appeared: list[Mapping] = []
        gone: list[Mapping] = []
        counts: dict[tuple[int, int, int, int, str], int] = {}
        scan = 0.0
        maps: list[Mapping] | None = None
        if self._alive():
            try:
                maps = read_maps(self.pid)
            except ProcessLookupError:
                maps = None
            if not self._alive():
                maps = None  # those maps may already be someone else's
        if maps is None:
            self.exited = True
            wanted: dict[tuple[int, int, int, int, str], Mapping] = {}
        else:
            wanted = self._wanted(maps)
        # 1. The mappings we know: collect and reset.  Those that are gone
        #    are collected one last time (a remote backend reads an unmapped
        #    range as clean, so this only counts what is still there).
        for key, (m, w) in list(self._watches.items()):
            t0 = time.perf_counter()
            try:
                counts[key] = len(w.dirty(reset=True))
            except ProcessLookupError:
                self.exited = True
                counts[key] = 0
            except OSError as e:
                if key in wanted:
                    errors.append(f"{m.start:#x}-{m.end:#x} {m.name}: {e}")
                counts[key] = 0
            finally:
                scan += time.perf_counter() - t0
            if key not in wanted:
                gone.append(m)
                del self._watches[key]
                w.close()
        # 2. New mappings: watched from now on (a new Watch starts clean).
        self._failed &= wanted.keys()
        for key, m in wanted.items():
            if key in self._watches or key in self._failed or self.exited:
                continue
            try:
                w = Watch(m.start, m.end - m.start, pid=None if self._self else self.pid,
                          backend=self._requested if self._requested != "auto"
                          else self.backend)
            except ProcessLookupError:
                self.exited = True
                break
            except PermissionError:
                raise
            except (OSError, ValueError) as e:
                if isinstance(e, UnsupportedError) or maps_still_have(self.pid, m):
                    errors.append(f"{m.start:#x}-{m.end:#x} {m.name}: {e}")
                    self._failed.add(key)
                continue
            self._watches[key] = (m, w)
            appeared.append(m)
        if self.exited:
            self.close()
        samples = [MappingSample(m, counts.get(key, 0))
                   for key, (m, _) in self._watches.items()]
        samples.sort(key=lambda s: (-s.pages, s.mapping.start))
        self.total_scan_seconds += scan
        self.total_samples += 1
        self.total_errors += len(errors)
        # Pages written to a mapping that is now gone still count in the
        # process's totals: report them as that mapping's last sample.
        for m in gone:
            n = counts.get(_key(m), 0)
            if n:
                samples.append(MappingSample(m, n))
        return ProcessSample(
            pid=self.pid, command=self.command, time=time.time(), interval=interval,
            mappings=samples, appeared=appeared, gone=gone, scan_seconds=scan,
            errors=errors, exited=self.exited,
        )

    def close(self) -> None:
        for _, w in self._watches.values():
            w.close()
        self._watches.clear()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _thread_group(tid: int) -> int | None:
    """The Tgid of thread *tid* (its process), or None."""
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def maps_still_have(pid: int, m: Mapping) -> bool:
    """Whether *m* is still a mapping of *pid* (a Watch that failed on a
    mapping unmapped meanwhile is no error)."""
    try:
        return any(_key(x) == _key(m) for x in read_maps(pid))
    except ProcessLookupError:
        return False
