"""The ``memwatch`` command (also ``python -m memwatch``).

``memwatch info``
    the kernel, the settings that decide which mechanisms work (soft-dirty,
    userfaultfd and ``vm.unprivileged_userfaultfd``, THP mode,
    ``ptrace_scope``), each mechanism with its capabilities and why it is
    unavailable, and which one ``backend="auto"`` picks and why (for a plain
    Watch, or ``--atomic``/``--kernel-writes``/``--partial-reset yes|no``);
    ``--json``.  ``backends`` is the same table without the settings (kept from 0.1).
``memwatch watch PID... | -- CMD ARGS...``
    a live, top-like view of other processes' write rates per mapping,
    through a mechanism that can watch another process (the patched kernel's
    ``process_memwatch(2)``, or soft-dirty); ``--json`` lines,
    ``--prometheus ADDR:PORT``.  ``watch --pid PID --address A --length L``
    polls one range (the 0.1 form).
``memwatch demo``
    a 60 Hz frame loop on this machine's default mechanism.

Adding a subcommand: write ``configure(parser)`` and ``run(args) -> int`` and
add one :class:`Command` to :data:`COMMANDS` (interfaces.md, t9a 20:20).

Exit status: 0 on success, 1 when the work cannot be done here (one line
saying why), 2 for a usage error, 130 on Ctrl-C, 141 when the reader of
standard output goes away (``| head``); ``watch -- CMD`` exits with CMD's
status.  No input prints a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from . import _backends, _bench, _memwatch
from ._common import UnsupportedError
from ._top import Mapping, ProcessSample, ProcessWatcher
from ._watch import PAGE_SIZE, Watch


class CliError(Exception):
    """A user-facing failure: ``memwatch: MESSAGE`` on stderr, exit *status*."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand: ``memwatch NAME``."""

    name: str
    help: str  # one line, shown by memwatch --help
    example: str  # shown at the end of memwatch NAME --help
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""
    aliases: tuple[str, ...] = ()


# -- values ---------------------------------------------------------------

# Linux's PID_MAX_LIMIT: no pid is larger on any configuration.
_PID_MAX = 1 << 22
# Longer than anyone polls, short enough for time.sleep() on every platform.
_INTERVAL_MAX = 86400.0


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _ranged_int(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
        return value

    return parse


_pid = _ranged_int(1, _PID_MAX, f"must be a process id (1..{_PID_MAX})")
_address = _ranged_int(0, (1 << 64) - 1, "must be an address (0..2**64-1)")
_length = _ranged_int(1, 1 << 64, "must be a positive number of bytes (at most 2**64)")
_count = _ranged_int(0, 1 << 63, "must be a count (0 or more)")


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= _INTERVAL_MAX):
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 and at most {_INTERVAL_MAX:g}, "
            f"got {text!r}"
        )
    return value


def _prometheus_address(text: str) -> tuple[str, int]:
    from ._prometheus import parse_address

    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# Only these can watch another process; the others are refused by argparse.
_REMOTE = tuple(n for n in _backends.NAMES if _backends.tracker_class(n).remote)  # type: ignore[attr-defined]
_LOCAL = tuple(n for n in _backends.NAMES if n not in ("softdirty",))


def _yes(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _table(rows: list[list[str]], out: TextIO) -> None:
    """Columns padded to their widest cell; the last column is left ragged."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip(), file=out)


# -- info / backends ------------------------------------------------------

_COLUMNS = (
    ("backend", "name"),
    ("available", "available"),
    ("remote", "remote"),
    ("partial_reset", "partial_reset"),
    ("atomic", "atomic"),
    ("kernel_writes", "sees_kernel_writes"),
    ("false_positives", "false_positives"),
)


def print_backends(file: TextIO) -> int:
    rows = [[title for title, _ in _COLUMNS] + ["reason"]]
    for b in _backends.backends():
        rows.append([_yes(getattr(b, attr)) for _, attr in _COLUMNS] + [b.reason])
    _table(rows, file)
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _has_cap_sys_ptrace() -> bool:
    status = _read("/proc/self/status") or ""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 19 & 1)  # CAP_SYS_PTRACE = 19
    return False


def _settings() -> list[dict[str, str]]:
    """The kernel settings that decide the mechanisms, each with what it means
    here.  Behaviour is probed (the backends' probes); sysctls are read."""
    by_name = {b.name: b for b in _backends.backends()}
    out: list[dict[str, str]] = []

    def add(name: str, value: str, meaning: str) -> None:
        out.append({"setting": name, "value": value, "meaning": meaning})

    sd = by_name["softdirty"]
    add("CONFIG_MEM_SOFT_DIRTY", "yes" if sd.available else "no",
        "probed: a written page's soft-dirty bit is set; softdirty can watch other "
        "processes" if sd.available else f"probed: {sd.reason}")
    sc = by_name["syscall"]
    add("process_memwatch(2)", "yes" if sc.available else "no",
        "the patched kernel's system call works" if sc.available else sc.reason)
    ok, code, _err = _memwatch.uffd_available()
    if ok or code != "uffd_open":
        uffd_value = "yes"
        features = []
        if by_name["uffd"].available:
            features.append("write-protect")
        if by_name["pagemap_scan"].available:
            features.append("async write-protect + PAGEMAP_SCAN")
        uffd_meaning = ("userfaultfd() works: " + ", ".join(features)) if features else (
            "userfaultfd() works but " + by_name["uffd"].reason)
    else:
        uffd_value = "no"
        uffd_meaning = by_name["uffd"].reason
    add("userfaultfd", uffd_value, uffd_meaning)
    unpriv = _read("/proc/sys/vm/unprivileged_userfaultfd")
    cap = _has_cap_sys_ptrace()
    if unpriv is None:
        meaning = "not readable here"
    elif unpriv == "1":
        meaning = "any process may use userfaultfd in full"
    elif cap:
        meaning = ("only processes with CAP_SYS_PTRACE may use userfaultfd in full; "
                   "this one has it")
    else:
        meaning = ("without CAP_SYS_PTRACE (as here) only UFFD_USER_MODE_ONLY: pagemap_scan "
                   "and uffd then do not see writes made by the kernel (read() into a buffer)")
    add("vm.unprivileged_userfaultfd", unpriv if unpriv is not None else "?", meaning)
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = "?"
    if thp is not None and "[" in thp:
        mode = thp[thp.index("[") + 1: thp.index("]")]
    thp_meaning = {
        "always": "anonymous memory may use 2 MiB huge pages: the soft-dirty mechanisms "
        "(syscall, softdirty) then report a whole huge page for one write "
        "(memwatch.alloc() opts out)",
        "madvise": "huge pages only where MADV_HUGEPAGE asks for them",
        "never": "no transparent huge pages: every mechanism reports single pages",
    }.get(mode, "transparent huge pages are not configurable here")
    add("transparent_hugepage", mode, thp_meaning)
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    scope_meaning = {
        None: "no Yama: watching another process needs the same user (or CAP_SYS_PTRACE)",
        "0": "classic: another process of the same user can be watched",
        "1": "restricted: without CAP_SYS_PTRACE only descendants can be reset by the "
        "syscall backend (memwatch watch -- CMD works; GET alone and softdirty do not "
        "need attach rights)",
        "2": "admin-only: watching with reset needs CAP_SYS_PTRACE",
        "3": "no attach at all: the syscall backend cannot reset another process",
    }.get(scope, "unknown value")
    add("kernel.yama.ptrace_scope", scope if scope is not None else "absent", scope_meaning)
    add("CAP_SYS_PTRACE", "yes" if cap else "no",
        "this process may watch any process" if cap else
        "this process may watch only processes of its own user")
    return out


def _auto_reasoning(remote: bool, asked: dict[str, bool | None]) -> list[dict[str, Any]]:
    """Each backend: chosen by auto for what is *asked*, or why not
    (``memwatch._backends.explain()``)."""
    return [
        {"backend": c.backend.name, "chosen": bool(c.chosen), "why": str(c.why)}
        for c in _backends.explain(
            remote=remote, atomic=asked.get("atomic"),
            kernel_writes=asked.get("kernel_writes"),
            partial_reset=asked.get("partial_reset"),
        )
    ]


def _asked_text(asked: dict[str, bool | None]) -> str:
    """", atomic=False": the requirements as a Watch() would take them."""
    return "".join(f", {k}={v}" for k, v in asked.items() if v is not None)


def gather_info(asked: dict[str, bool | None] | None = None) -> dict[str, Any]:
    """Everything ``memwatch info`` prints, as JSON-able data; *asked*: the
    requirements (atomic=, kernel_writes=, partial_reset=) auto is
    explained for (None or absent: preferred)."""
    from . import __version__

    asked = _backends.check_requirements(**(asked or {}))
    for k in _backends.REQUIREMENTS:
        asked.setdefault(k, None)
    uname = os.uname()
    local = _auto_reasoning(False, asked)
    remote = _auto_reasoning(True, asked)
    by_local = {r["backend"]: r for r in local}
    return {
        "memwatch": __version__,
        "kernel": uname.release,
        "machine": uname.machine,
        "python": sys.version.split()[0],
        "page_size": PAGE_SIZE,
        "settings": _settings(),
        "backends": [
            {**dataclasses.asdict(b), "auto": by_local[b.name]["chosen"],
             "why": by_local[b.name]["why"]}
            for b in _backends.backends()
        ],
        "auto": {
            "asked": asked,
            "this_process": next((r["backend"] for r in local if r["chosen"]), None),
            "other_process": next((r["backend"] for r in remote if r["chosen"]), None),
            "this_process_why": local,
            "other_process_why": remote,
        },
    }


def _print_info(info: dict[str, Any], out: TextIO) -> None:
    print(f"memwatch {info['memwatch']} on Linux {info['kernel']} ({info['machine']}), "
          f"Python {info['python']}, page size {info['page_size']}", file=out)
    print("\nsettings that decide the mechanisms:", file=out)
    _table([["  " + s["setting"], s["value"], s["meaning"]] for s in info["settings"]], out)
    print("\nmechanisms (* = what backend=\"auto\" takes here, for this process):", file=out)
    rows = [[title for title, _ in _COLUMNS] + ["why (not)"]]
    for b in info["backends"]:
        mark = "*" if b["auto"] else " "
        rows.append([mark + b["name"]] + [_yes(b[attr]) for _, attr in _COLUMNS[1:]]
                    + [b["why"]])
    _table(rows, out)
    auto = info["auto"]

    def chosen_line(who: str, name: str | None, rows: list[dict[str, Any]]) -> str:
        if name is None:
            return f"auto for {who}: none can (every mechanism is listed above with why)"
        why = next(r["why"] for r in rows if r["chosen"])
        return f"auto for {who}: {name} ({why.removeprefix('chosen: ')})"

    asked = _asked_text(auto.get("asked", {}))
    print("\n" + chosen_line(f"this process (Watch(buf{asked}))", auto["this_process"],
                             auto["this_process_why"]), file=out)
    who = f"another process (Watch(address, length, pid=PID{asked}))"
    if auto["other_process"] is None:
        why = "; ".join(f"{r['backend']}: {r['why']}" for r in auto["other_process_why"]
                        if _backends.tracker_class(r["backend"]).remote)  # type: ignore[attr-defined]
        print(f"auto for {who}: none can here ({why})", file=out)
    else:
        print(chosen_line(who, auto["other_process"], auto["other_process_why"]), file=out)


def _configure_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead")


def _yes_no(text: str) -> bool:
    if text in ("yes", "no"):
        return text == "yes"
    raise argparse.ArgumentTypeError(f"expected yes or no, not {text!r}")


def _configure_info_asked(p: argparse.ArgumentParser) -> None:
    _configure_info(p)
    for keyword in _backends.REQUIREMENTS:
        flag = "--" + keyword.replace("_", "-")
        p.add_argument(flag, type=_yes_no, default=None, metavar="yes|no", dest=keyword,
                       help=f"explain auto for a Watch that must (yes) or need not (no) "
                       f"{_backends._WORDS[keyword]}; default: preferred, as "
                       f"Watch({keyword}=None)")


def run_info(args: argparse.Namespace) -> int:
    info = gather_info({k: getattr(args, k, None) for k in _backends.REQUIREMENTS})
    if args.json:
        json.dump(info, sys.stdout, indent=2)
        print()
    else:
        _print_info(info, sys.stdout)
    return 0


def run_backends(args: argparse.Namespace) -> int:
    if args.json:
        json.dump(gather_info()["backends"], sys.stdout, indent=2)
        print()
        return 0
    return print_backends(sys.stdout)


# -- watch ----------------------------------------------------------------


def _configure_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("pids", nargs="*", type=_pid, metavar="PID",
                   help="processes to watch (or: -- CMD ARGS... to start one and watch it)")
    p.add_argument("--interval", type=_interval, default=1.0, metavar="S",
                   help=f"seconds between samples, above 0 and at most {_INTERVAL_MAX:g} "
                   "(default 1)")
    p.add_argument("--count", type=_count, default=None, metavar="N",
                   help="stop after N samples (default: until Ctrl-C or the processes exit)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object per process and sample, one per line")
    p.add_argument("--prometheus", type=_prometheus_address, default=None,
                   metavar="ADDR:PORT",
                   help="also serve the counters to Prometheus at http://ADDR:PORT/metrics "
                   "(needs pip install 'memwatch[prometheus]'; port 0 picks one)")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="print nothing per sample (with --prometheus)")
    p.add_argument("--backend", default="auto", choices=("auto", *_REMOTE), metavar="NAME",
                   help="auto (default) or one of the backends that can watch another "
                   "process: " + ", ".join(_REMOTE))
    p.add_argument("--rows", type=_count, default=None, metavar="N",
                   help="show at most N mappings per process (default: the busy ones; "
                   "on a terminal, what fits)")
    old = p.add_argument_group("one range of one process (the 0.1 form)")
    old.add_argument("--pid", type=_pid, default=None, help="process to watch")
    old.add_argument("--address", type=_address, default=None, metavar="ADDR",
                     help="start address in that process (0x... accepted): print one line "
                     "per interval with the written pages' offsets from ADDR")
    old.add_argument("--length", type=_length, default=None, metavar="LEN",
                     help="bytes to watch from ADDR")


def watch_range(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``watch --pid PID --address ADDR --length LEN``: one line per interval."""
    pid: int = args.pid
    try:
        watch = Watch(args.address, args.length, pid=pid, backend=args.backend)
    except UnsupportedError as e:
        print(f"memwatch: cannot watch process {pid}: {e}", file=err)
        return 1
    except ProcessLookupError:
        print(f"memwatch: no process with pid {pid}", file=err)
        return 1
    except PermissionError as e:
        print(f"memwatch: not allowed to watch process {pid}: {e}", file=err)
        return 1
    except (ValueError, TypeError, OverflowError, OSError) as e:
        print(f"memwatch: cannot watch {args.address:#x}+{args.length:#x} "
              f"in process {pid}: {e}", file=err)
        return 1
    with watch:
        print(f"# pid {pid} address {watch.address:#x} length {watch.length:#x} "
              f"backend {watch.backend}", file=out, flush=True)
        n = 0
        try:
            while args.count is None or n < args.count:
                time.sleep(args.interval)
                offsets = watch.dirty(reset=True)
                listed = " ".join(f"{o:#x}" for o in offsets)
                print(f"{time.time():.3f} {len(offsets)} {listed}".rstrip(),
                      file=out, flush=True)
                n += 1
        except ProcessLookupError:
            print(f"memwatch: process {pid} has exited", file=err)
            return 1
        except (OSError, ValueError) as e:
            print(f"memwatch: watching process {pid} failed: {e}", file=err)
            return 1
    return 0


def _mib_per_s(pages: int, seconds: float) -> float:
    return pages * PAGE_SIZE / (1 << 20) / seconds if seconds > 0 else 0.0


def _mapping_row(s: ProcessSample, m: Mapping, pages: int, width: int | None = None) -> str:
    row = (f"{s.pid:>7}  {pages:>8}  {_mib_per_s(pages, s.interval):>9.2f}  "
           f"{m.start:012x}-{m.end:012x} {m.perms}  ")
    name = m.name
    room = (width - len(row)) if width is not None else len(name)
    if len(name) > room >= 8:
        name = "..." + name[len(name) - room + 3:]  # the end of a path says most
    return row + name


_HEADER = f"{'PID':>7}  {'PAGES':>8}  {'MiB/s':>9}  {'MAPPING':<25} {'PERM'}  NAME"


def _render_text(samples: list[ProcessSample], rows: int | None, tty: bool,
                 height: int, width: int | None = None) -> list[str]:
    lines: list[str] = []
    for s in samples:
        lines.append(
            f"{time.strftime('%H:%M:%S', time.localtime(s.time))} pid {s.pid} "
            f"({s.command}): {s.pages} pages in {s.interval:.2f} s "
            f"({_mib_per_s(s.pages, s.interval):.2f} MiB/s), "
            f"{sum(1 for m in s.mappings if m.mapping not in s.gone)} mappings, "
            f"scan {s.scan_seconds * 1e3:.2f} ms"
            + (", exited" if s.exited else ""))
        for m in s.appeared:
            if not tty:
                lines.append(f"  + {m.start:012x}-{m.end:012x} {m.perms}  {m.name}")
        for m in s.gone:
            lines.append(f"  - {m.start:012x}-{m.end:012x} {m.perms}  {m.name}")
        for e in s.errors:
            lines.append(f"  ! {e}")
        busy = [m for m in s.mappings if m.pages > 0]
        shown = busy if rows is None else s.mappings[:rows]
        if tty and rows is None:
            room = max(1, (height - 2) // max(1, len(samples)) - 2)
            shown = s.mappings[:room]
        if shown:
            lines.append(_HEADER)
            lines.extend(_mapping_row(s, m.mapping, m.pages, width) for m in shown)
    return lines


def _json_line(s: ProcessSample) -> str:
    def mapping(m: Mapping) -> dict[str, Any]:
        return {"start": m.start, "end": m.end, "perms": m.perms, "name": m.name}

    return json.dumps({
        "time": round(s.time, 6),
        "pid": s.pid,
        "command": s.command,
        "interval": round(s.interval, 6),
        "pages": s.pages,
        "mib_per_s": round(_mib_per_s(s.pages, s.interval), 6),
        "scan_seconds": round(s.scan_seconds, 9),
        "mappings": [{**mapping(m.mapping), "pages": m.pages} for m in s.mappings
                     if m.pages],
        "watched": sum(1 for m in s.mappings if m.mapping not in s.gone),
        "appeared": [mapping(m) for m in s.appeared],
        "gone": [mapping(m) for m in s.gone],
        "errors": s.errors,
        "exited": s.exited,
    })


def _raise_fd_limit() -> None:
    # One Watch per writable mapping holds a descriptor or two: a Python
    # process has ~100 writable mappings, a browser thousands.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE,
                               (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
        except (OSError, ValueError):
            pass


def watch_processes(args: argparse.Namespace, out: TextIO, err: TextIO,
                    only: Callable[[Mapping], bool] | None = None) -> int:
    """``watch PID...`` / ``watch -- CMD``; *only* narrows the mappings
    watched (tests)."""
    command: list[str] = args.command or []
    if not command and not args.pids:
        raise CliError("watch needs a PID, or -- CMD ARGS... to start a command and watch it "
                       "(see memwatch watch --help)", status=2)
    backend = args.backend
    try:
        # Before anything is started: say why when nothing here can do it.
        # (memwatch's own pid is "this process": any backend can do that.)
        _backends.choose(backend, remote=bool(command) or set(args.pids) != {os.getpid()})
    except UnsupportedError as e:
        who = f"process {', '.join(map(str, args.pids))}" if args.pids else \
            f"the command {command[0]!r} (not started)"
        raise CliError(f"cannot watch {who}: {e}") from None
    _raise_fd_limit()
    exporter = None
    if args.prometheus is not None:
        from ._prometheus import Exporter, MissingPrometheusClient

        host, port = args.prometheus
        try:
            exporter = Exporter(host, port)
        except MissingPrometheusClient as e:
            raise CliError(str(e)) from None
        except OSError as e:
            raise CliError(f"cannot serve Prometheus metrics on {host}:{port}: "
                           f"{e.strerror or e}") from None
        print(f"memwatch: serving Prometheus metrics on http://{exporter.host}:"
              f"{exporter.port}/metrics", file=err, flush=True)
    child: subprocess.Popen[bytes] | None = None
    watchers: list[ProcessWatcher] = []
    tty = out.isatty() and not args.json
    try:
        if command:
            try:
                child = subprocess.Popen(command)
            except OSError as e:
                raise CliError(f"cannot run {command[0]!r}: {e.strerror or e}") from None
        for pid in ([child.pid] if child is not None else []) + list(args.pids):
            try:
                watchers.append(ProcessWatcher(pid, backend=backend, only=only))
            except UnsupportedError as e:
                raise CliError(f"cannot watch process {pid}: {e}") from None
            except ProcessLookupError:
                raise CliError(f"no process with pid {pid}") from None
            except ValueError as e:
                raise CliError(f"cannot watch {pid}: {e}") from None
        for w in watchers:
            _first_sample(w)
        return _watch_loop(args, watchers, child, exporter, out, err, tty)
    finally:
        if tty:
            out.write("\x1b[?25h\n")  # the cursor comes back, whatever happened
            out.flush()
        for w in watchers:
            w.close()
        if exporter is not None:
            exporter.close()
        if child is not None and child.poll() is None:
            # Ctrl-C reached it too (same process group); give it a moment.
            try:
                child.wait(timeout=2)
            except subprocess.TimeoutExpired:
                child.terminate()
                child.wait()


def _first_sample(w: ProcessWatcher) -> None:
    """Opens the Watches (pages written before this are not counted)."""
    try:
        first = w.sample()
    except PermissionError as e:
        raise CliError(f"not allowed to watch process {w.pid}: {e}") from None
    if not first.mappings and first.errors:
        raise CliError(f"cannot watch process {w.pid}: {first.errors[0]}")


def _watch_loop(args: argparse.Namespace, watchers: list[ProcessWatcher],
                child: subprocess.Popen[bytes] | None, exporter: Any,
                out: TextIO, err: TextIO, tty: bool) -> int:
    if tty:
        out.write("\x1b[?25l")  # hide the cursor while redrawing
    backend = watchers[0].backend if watchers else "?"
    n = 0
    deadline = time.monotonic()
    while watchers and (args.count is None or n < args.count):
        deadline += args.interval
        pause = deadline - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            deadline = time.monotonic()  # a late sample: do not try to catch up
        samples = []
        for w in list(watchers):
            try:
                s = w.sample()
            except PermissionError as e:
                raise CliError(f"not allowed to watch process {w.pid}: {e}") from None
            samples.append(s)
            if exporter is not None:
                exporter.record(s)
            if s.exited:
                watchers.remove(w)
        n += 1
        if args.quiet:
            pass
        elif args.json:
            for s in samples:
                print(_json_line(s), file=out)
        else:
            size = shutil.get_terminal_size()
            if tty:
                width = size.columns
                title = (f"memwatch watch: {backend}, every {args.interval:g} s, "
                         f"sample {n}; Ctrl-C to quit")
                lines = [title] + _render_text(samples, args.rows, tty, size.lines - 1, width)
                out.write("\x1b[H\x1b[2J" + "\n".join(ln[:width] for ln in lines[:size.lines]))
            else:
                print("\n".join(_render_text(samples, args.rows, tty, size.lines)), file=out)
        out.flush()
        for s in samples:
            if s.exited:
                print(f"memwatch: process {s.pid} ({s.command}) has exited", file=err)
    if child is not None:
        if child.poll() is None and args.count is not None:
            return 0
        return child.wait() if child.returncode is None else child.returncode
    return 0


def run_watch(args: argparse.Namespace) -> int:
    if args.address is not None or args.length is not None:
        if args.pid is None or args.address is None or args.length is None or args.pids \
                or args.command:
            raise CliError("watch --address/--length watch one range: give --pid PID "
                           "--address ADDR --length LEN (or watch whole processes: "
                           "memwatch watch PID...)", status=2)
        if args.prometheus is not None or args.json:
            raise CliError("--json and --prometheus are for whole processes "
                           "(memwatch watch PID...)", status=2)
        return watch_range(args, sys.stdout, sys.stderr)
    if args.pid is not None:
        args.pids = [args.pid, *args.pids]
    return watch_processes(args, sys.stdout, sys.stderr)


# -- demo -----------------------------------------------------------------


def _configure_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--frames", type=_ranged_int(1, 1 << 20, "must be 1..1048576 frames"),
                   default=120, metavar="N", help="frames to run (default 120: 2 s at 60 Hz)")
    p.add_argument("--rate", type=_interval, default=60.0, metavar="HZ",
                   help="frames (and polls) per second (default 60)")
    p.add_argument("--size", type=_ranged_int(1, 1 << 16, "must be 1..65536 MiB"),
                   default=64, metavar="MIB", help="buffer size in MiB (default 64)")
    p.add_argument("--pages", type=_ranged_int(1, 1 << 16, "must be 1..65536 pages"),
                   default=8, metavar="K", help="each frame writes 1..K pages (default 8)")
    p.add_argument("--backend", default="auto", choices=("auto", *_LOCAL), metavar="NAME",
                   help="auto (default: what this machine does best) or one of "
                   + ", ".join(_LOCAL))
    p.add_argument("--seed", type=_int, default=1, help="random seed (default 1)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only the summary")


def run_demo(args: argparse.Namespace) -> int:
    from ._winapi import alloc

    out = sys.stdout
    size = args.size << 20
    try:
        m = alloc(size, backend=args.backend)
    except UnsupportedError as e:
        raise CliError(f"demo: {e}") from None
    except (OSError, MemoryError) as e:
        raise CliError(f"demo: cannot map {args.size} MiB: {e}") from None
    rng = random.Random(args.seed)
    npages = size // PAGE_SIZE
    cap = min(npages, 1 << 16)
    got = array("Q", bytes(8 * cap))
    w = m.watch
    costs: list[float] = []
    written_total = reported_total = missed_total = extra_total = 0
    period = 1.0 / args.rate
    try:
        print(f"memwatch demo: {args.frames} frames at {args.rate:g} Hz over a "
              f"{args.size} MiB buffer ({npages} pages), backend {w.backend}; each frame "
              f"writes 1..{args.pages} random pages, then polls w.dirty_into(out, reset=True)",
              file=out, flush=True)
        deadline = time.perf_counter()
        for frame in range(args.frames):
            pages = {rng.randrange(npages) for _ in range(rng.randint(1, args.pages))}
            for p in pages:
                m[p * PAGE_SIZE] = (frame + 1) & 0xFF  # the "game" writes
            t0 = time.perf_counter_ns()
            n = w.dirty_into(got, reset=True)
            cost = (time.perf_counter_ns() - t0) / 1e3
            costs.append(cost)
            reported = {got[i] // PAGE_SIZE for i in range(n)}
            missed = len(pages - reported)
            extra = len(reported - pages)
            written_total += len(pages)
            reported_total += n
            missed_total += missed
            extra_total += extra
            if not args.quiet:
                note = "" if not (missed or extra) else \
                    f" (missed {missed}, not written {extra})"
                print(f"frame {frame + 1:4}: pages written {len(pages):3}, dirty {n:3}, "
                      f"poll {cost:8.1f} us{note}", file=out, flush=True)
            deadline += period
            pause = deadline - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                deadline = time.perf_counter()
    finally:
        m.close()
    costs.sort()
    p99 = costs[min(len(costs) - 1, int(len(costs) * 0.99))]
    print(f"summary: {args.frames} frames on {w.backend}: {written_total} pages written, "
          f"{reported_total} reported, {missed_total} missed, {extra_total} extra; poll "
          f"median {statistics.median(costs):.1f} us, p99 {p99:.1f} us, max {costs[-1]:.1f} "
          f"us ({statistics.median(costs) / (period * 1e6) * 100:.3f}% of a "
          f"{period * 1e3:.1f} ms frame)", file=out, flush=True)
    if missed_total:
        raise CliError(f"demo: {missed_total} written pages were not reported: a lost write "
                       f"is a bug in memwatch or the {w.backend} mechanism; please report it")
    return 0


# -- the command table ------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    Command(
        "info", "the kernel, its settings, each mechanism and what auto picks here",
        "memwatch info          # or: memwatch info --json",
        _configure_info_asked, run_info,
        description="Show the kernel release, the settings that decide which tracking "
        "mechanisms work (soft-dirty, userfaultfd and vm.unprivileged_userfaultfd, "
        "transparent huge pages, ptrace_scope), every mechanism with its capabilities "
        "and why it is unavailable, and which one backend=\"auto\" picks and why: "
        "for a plain Watch, or for what --atomic, --kernel-writes and --partial-reset "
        "say the Watch requires (yes) or does not need (no).",
    ),
    Command(
        "backends", "the mechanisms table alone (as in memwatch 0.1)",
        "memwatch backends", _configure_info, run_backends,
    ),
    Command(
        "watch", "live write rates of other processes, per mapping (needs a remote "
        "mechanism)",
        "memwatch watch 1234 --interval 0.5     # or: memwatch watch -- python3 app.py",
        _configure_watch, run_watch,
        description="Show, every --interval, how many pages each writable mapping of "
        "the processes was written in (busiest first), and the rate in MiB/s. "
        "Watching another process needs the patched kernel's process_memwatch(2) or "
        "a kernel with CONFIG_MEM_SOFT_DIRTY (memwatch info says which this one "
        "has). A mapping is counted from the first sample that sees it.",
    ),
    Command(name="bench", help=_bench.HELP, example=_bench.EXAMPLE,
            configure=_bench.configure, run=_bench.run),
    Command(
        "demo", "a 60 Hz frame loop on this machine's default mechanism",
        "memwatch demo --frames 60", _configure_demo, run_demo,
        description="Allocate a large buffer, write a few random pages of it each "
        "frame, poll the written pages 60 times a second with reset, and print what "
        "each frame dirtied and what the poll cost, then a summary. Exits 1 if a "
        "written page was not reported.",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="memwatch",
        description="Which pages of memory were written: page write-tracking for Linux.",
        epilog="examples:\n" + "\n".join(f"  {c.example}" for c in COMMANDS)
        + "\n\n'memwatch COMMAND --help' describes each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"memwatch {__version__}")
    sub = parser.add_subparsers(dest="subcommand", required=True, metavar="COMMAND")
    for c in COMMANDS:
        p = sub.add_parser(
            c.name, help=c.help, aliases=list(c.aliases),
            description=c.description or c.help[:1].upper() + c.help[1:] + ".",
            epilog=f"example:\n  {c.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.configure(p)
        p.set_defaults(run=c.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    dashdash = "--" in argv
    if dashdash:
        i = argv.index("--")
        argv, command = argv[:i], argv[i + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command = command
    if dashdash and args.run is not run_watch:
        parser.error(f"only 'watch' runs a command after --, not '{args.subcommand}'")
    if dashdash and not command:
        parser.error("watch --: give the command to run after --")
    try:
        return int(args.run(args))
    except CliError as e:
        print(f"memwatch: {e}", file=sys.stderr)
        return e.status
    except UnsupportedError as e:
        print(f"memwatch: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        if isinstance(e, BrokenPipeError):
            return _pipe_closed()
        print(f"memwatch: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _pipe_closed() -> int:
    # The reader went away (memwatch watch ... | head): stop quietly, and
    # keep the interpreter's final flush from complaining.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def console_main() -> None:
    """The ``memwatch`` console script: SIGTERM ends a watch as Ctrl-C does
    (the terminal is restored), then exit with :func:`main`'s status."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.exit(main())
