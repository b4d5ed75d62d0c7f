"""Command line: ``python -m memwatch {backends,watch}``.

``backends``
    a table of every mechanism, whether it works here and why not.
``watch --pid PID --address ADDR --length LEN [--interval S] [--count N]``
    poll another process's dirty pages every S seconds (remote backends only:
    ``syscall``, ``softdirty``); each line is a timestamp, the number of pages
    written since the previous line, and their offsets from ADDR rounded down
    to a page.

Exit status: 0 on success, 1 when the watch cannot be set up or the target
goes away, 2 for a usage error (argparse checks every value: a pid, an
address below 2**64, a positive length, a finite interval up to a day), 130
on Ctrl-C, 141 when the reader of standard output goes away (``| head``).
No input prints a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from . import _backends, _bench
from ._common import UnsupportedError
from ._watch import Watch

_COLUMNS = (
    ("backend", "name"),
    ("available", "available"),
    ("remote", "remote"),
    ("partial_reset", "partial_reset"),
    ("atomic", "atomic"),
    ("kernel_writes", "sees_kernel_writes"),
    ("false_positives", "false_positives"),
)


def _yes(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_backends(file: TextIO) -> int:
    rows = [[title for title, _ in _COLUMNS] + ["reason"]]
    for b in _backends.backends():
        rows.append([_yes(getattr(b, attr)) for _, attr in _COLUMNS] + [b.reason])
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)] + [row[-1]]
        print("  ".join(cells).rstrip(), file=file)
    return 0


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


# Only these can watch another process; the others are refused by argparse.
_REMOTE = tuple(
    n for n in _backends.NAMES if getattr(_backends.tracker_class(n), "remote", False)
)


def watch_process(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m memwatch",
        description="Page write-tracking for Linux.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("backends", help="list the tracking mechanisms and whether they work here")
    w = sub.add_parser(
        "watch",
        help="poll the dirty pages of a range of another process",
        description="Poll the pages of ADDR..ADDR+LEN that process PID writes, "
        "printing one line per interval: time, count, page offsets from the "
        "page-aligned ADDR.  Needs a backend that can watch another process "
        "(syscall or softdirty).",
    )
    w.add_argument("--pid", type=_pid, required=True, help="process to watch")
    w.add_argument("--address", type=_address, required=True, metavar="ADDR",
                   help="start address in that process (0x... accepted)")
    w.add_argument("--length", type=_length, required=True, metavar="LEN",
                   help="bytes to watch")
    w.add_argument("--interval", type=_interval, default=1.0, metavar="S",
                   help=f"seconds between polls, above 0 and at most {_INTERVAL_MAX:g} "
                   "(default 1)")
    w.add_argument("--count", type=_count, default=None, metavar="N",
                   help="stop after N polls (default: until Ctrl-C)")
    w.add_argument("--backend", default="auto", choices=("auto", *_REMOTE), metavar="NAME",
                   help="auto (default) or one of the backends that can watch another "
                   "process: " + ", ".join(_REMOTE))
    _bench.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "backends":
            return print_backends(sys.stdout)
        if args.command == "bench":
            return _bench.run(args)
        return watch_process(args, sys.stdout, sys.stderr)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (python -m memwatch watch ... | head): stop
        # quietly, and keep the interpreter's final flush from complaining.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
