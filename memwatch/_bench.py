"""``memwatch bench``: the tracking-cycle table on the running kernel.

One *cycle* is what a user of write tracking pays per round: write N pages
of a populated 20000-page private mapping (one byte each, spread evenly, by a
single strided C-level copy), then collect them with
``Watch.dirty_into(out, reset=True)``.  Both halves are timed together:
the write half is where uffd and mprotect pay (one fault per page), the
collect half is where the scanning mechanisms pay.  A ``writes only`` row
(the same writes, no Watch) shows the floor every row includes.

Every available backend is measured, the syscall in both of its modes
(``syscall`` is what ``Watch`` uses, ``MEMWATCH_SD_NO_REUSED_REGIONS``;
``syscall/default`` without it).  The table gives the median in
microseconds, and outside a QEMU guest also thousands of CPU cycles (at the
``cpu MHz`` of ``/proc/cpuinfo``) next to the only published figures, the
v1 authors' (``SEED_KCYCLES``).  ``--json FILE`` writes pytest-benchmark's
JSON layout (``pytest-benchmark compare FILE`` reads it); ``--plot FILE.png``
draws the log-log chart (needs matplotlib: ``pip install 'memwatch[plot]'``).

The same cycle is what ``benchmarks/bench_dirty.py`` times under
pytest-benchmark (it imports :class:`CycleTarget` from here).
"""

from __future__ import annotations

import argparse
import bisect
import datetime
import importlib
import json
import math
import mmap
import os
import platform
import statistics
import subprocess
import sys
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, NamedTuple

from . import _backends
from ._watch import Watch

PAGE = mmap.PAGESIZE
REGION = 20_000  # pages, as in the v1 cover letter's table
PAGES: tuple[int, ...] = (1, 10, 100, 1000, 10_000)

#: The v1 authors' table (thousands of CPU cycles per cycle, one thread;
#: /work/shared/design-notes.md section 2); their machine is unknown.
SEED_KCYCLES: dict[str, tuple[float, ...]] = {
    "process_memwatch": (7, 58, 281, 1178, 17563),
    "process_memwatch, NO_REUSED_REGIONS": (4, 23, 107, 1331, 8924),
    "userfaultfd (sync handler)": (5405, 6550, 10387, 55708, 621522),
    "mprotect + SIGSEGV": (35, 611, 1060, 6646, 60149),
}

WRITES_ONLY = "writes only"


class Variant(NamedTuple):
    """One row: a label, the backend (None: no Watch), the syscall mode."""

    label: str
    backend: str | None
    no_reused_regions: bool | None = None


def variants(names: Sequence[str] | None = None) -> list[Variant]:
    """The rows to measure here: every available backend (or those in
    *names*), the syscall in both modes, then the ``writes only`` floor."""
    rows: list[Variant] = []
    for b in _backends.backends():
        if not b.available or (names is not None and b.name not in names):
            continue
        if b.name == "syscall":
            rows.append(Variant("syscall", "syscall", True))
            rows.append(Variant("syscall/default", "syscall", False))
        else:
            rows.append(Variant(b.name, b.name))
    rows.append(Variant(WRITES_ONLY, None))
    return rows


@contextmanager
def syscall_mode(no_reused_regions: bool | None) -> Iterator[None]:
    """Create syscall Watches in the given mode inside the block (the
    facade always passes NO_REUSED_REGIONS; the default mode is benchmarked
    by switching the module's switch, as tests/test_guest.py does)."""
    if no_reused_regions is None:
        yield
        return
    name = "_SYSCALL_NO_REUSED_REGIONS"
    old = getattr(_backends, name)
    setattr(_backends, name, no_reused_regions)
    try:
        yield
    finally:
        setattr(_backends, name, old)


class CycleTarget:
    """A populated private mapping of *region* pages, watched by *variant*.

    :meth:`cycle` returns the timed function: write *npages* pages, then
    ``dirty_into(out, reset=True)``; it returns the count collected (the
    number written for ``writes only``).  A CycleTarget can be reused for
    every page count; :meth:`close` releases it.
    """

    def __init__(self, variant: Variant, region: int = REGION) -> None:
        self.variant = variant
        self.region = region
        self.map = mmap.mmap(-1, region * PAGE, flags=mmap.MAP_PRIVATE)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):  # one page per write, on every backend
            self.map.madvise(mmap.MADV_NOHUGEPAGE)
        self.view = memoryview(self.map)
        self.view[:] = bytes(region * PAGE)  # populate: time tracking, not first faults
        self.out = array("Q", bytes(8 * region))
        self.watch: Watch | None = None
        if variant.backend is not None:
            with syscall_mode(variant.no_reused_regions):
                self.watch = Watch(self.map, backend=variant.backend)

    def writer(self, npages: int) -> Callable[[], None]:
        """One byte into each of *npages* pages spread over the region, by a
        single strided memoryview copy (C speed, about 20 ns a page on a
        host); the value alternates so every round really writes."""
        if not 1 <= npages <= self.region:
            raise ValueError(f"npages must be 1..{self.region}, got {npages}")
        step = self.region // npages * PAGE
        dst = self.view[0 : npages * step : step]
        payloads = (b"\x01" * npages, b"\x02" * npages)
        flip = [0]

        def write() -> None:
            flip[0] ^= 1
            dst[:] = payloads[flip[0]]

        return write

    def cycle(self, npages: int) -> Callable[[], int]:
        write = self.writer(npages)
        if self.watch is None:
            def writes_only() -> int:
                write()
                return npages

            return writes_only
        into, out = self.watch.dirty_into, self.out

        def cycle() -> int:
            write()
            return into(out, reset=True)

        self.watch.reset()
        return cycle

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.view.release()
        self.map.close()


def sample(
    fn: Callable[[], int], expect: int, *, min_rounds: int, max_rounds: int, budget: float
) -> list[float]:
    """Seconds per call of *fn*: one warm-up call, then at least *min_rounds*
    and at most *max_rounds*, stopping once *budget* seconds have passed.
    A call collecting fewer than *expect* pages is a lost write: RuntimeError."""
    clock = time.perf_counter_ns
    data: list[float] = []
    fn()
    t_end = time.monotonic() + budget
    while len(data) < max_rounds and (len(data) < min_rounds or time.monotonic() < t_end):
        t0 = clock()
        n = fn()
        data.append((clock() - t0) * 1e-9)
        if n < expect:
            raise RuntimeError(f"a cycle wrote {expect} pages but collected {n}")
    return data


@dataclass
class Result:
    """The samples (seconds) of one benchmark and how to name it."""

    group: str
    name: str
    data: list[float]
    extra_info: dict[str, Any] = field(default_factory=dict)

    @property
    def median(self) -> float:
        return statistics.median(self.data)


def run_cycles(
    rows: Sequence[Variant],
    pages: Sequence[int] = PAGES,
    *,
    region: int = REGION,
    min_rounds: int = 3,
    max_rounds: int = 200,
    budget: float = 1.0,
    progress: IO[str] | None = None,
) -> list[Result]:
    """The cycle table: one Result per (row, page count)."""
    results: list[Result] = []
    total, done = len(rows) * len(pages), 0
    for v in rows:
        target = CycleTarget(v, region)
        try:
            for n in pages:
                data = sample(target.cycle(n), n, min_rounds=min_rounds,
                              max_rounds=max_rounds, budget=budget)
                done += 1
                r = Result(f"cycle-{n:05d}", f"cycle[{v.label}-{n:05d}]", data,
                           {"kind": "cycle", "backend": v.backend or "none",
                            "row": v.label, "pages": n, "region_pages": region})
                results.append(r)
                if progress is not None:
                    print(f"[{done:2d}/{total}] {v.label:<16} {n:>6} pages: "
                          f"{r.median * 1e6:11.1f} us ({len(data)} rounds)",
                          file=progress, flush=True)
        finally:
            target.close()
    return results


def in_guest() -> bool:
    """True inside ci/vm-run.sh's QEMU guest (emulated cycles mean nothing)."""
    return os.environ.get("MEMWATCH_IN_GUEST") == "1"


def cpu_mhz() -> float | None:
    """The first ``cpu MHz`` of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return float(line.split(":", 1)[1])
    except (OSError, ValueError):
        pass
    return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(results: Sequence[Result], mhz: float | None = None) -> str:
    """Median microseconds per cycle, one line per row; with *mhz* also
    kcycles, with the seed's published rows under them."""
    cycles = [r for r in results if r.extra_info.get("kind") == "cycle"]
    pages = sorted({int(r.extra_info["pages"]) for r in cycles})
    rows: dict[str, dict[int, float]] = {}
    for r in cycles:
        rows.setdefault(str(r.extra_info["row"]), {})[int(r.extra_info["pages"])] = r.median
    width = max([16, *(len(k) for k in rows), *(len(k) for k in SEED_KCYCLES)]) + 1

    def block(title: str, scale: float, fmt: str) -> list[str]:
        head = f"{title:<{width}}" + "".join(f"{n:>11}" for n in pages)
        lines = [head, "-" * len(head)]
        for label, med in rows.items():
            cells = "".join(
                f"{format(med[n] * scale, fmt):>11}" if n in med else f"{'-':>11}"
                for n in pages
            )
            lines.append(f"{label:<{width}}{cells}")
        return lines

    out = block("us per cycle", 1e6, ".1f")
    if mhz:
        out += ["", *block(f"kcycles ({mhz:.0f} MHz)", mhz * 1e6 / 1e3, ".1f")]
        if all(n in PAGES for n in pages):
            out.append(f"{'seed (v1 authors, their machine):':<{width}}")
            for label, vals in SEED_KCYCLES.items():
                cells = "".join(f"{vals[PAGES.index(n)]:>11g}" for n in pages)
                out.append(f"{label:<{width}}{cells}")
    return "\n".join(out)


def _quartiles(data: list[float]) -> tuple[float, float]:
    """q1, q3 as pytest-benchmark computes them."""
    d, n = sorted(data), len(data)
    if n == 1:
        return d[0], d[0]
    if n % 2:
        k, q = n // 4, n % 4
        if q == 1:
            return 0.25 * d[k - 1] + 0.75 * d[k], 0.75 * d[3 * k] + 0.25 * d[3 * k + 1]
        return 0.75 * d[k] + 0.25 * d[k + 1], 0.25 * d[3 * k + 1] + 0.75 * d[3 * k + 2]
    return statistics.median(d[: n // 2]), statistics.median(d[n // 2 :])


def stats(data: list[float]) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` object for *data* (seconds per round)."""
    d = sorted(data)
    mean = statistics.mean(d)
    sd = statistics.stdev(d) if len(d) > 1 else 0.0
    q1, q3 = _quartiles(d)
    iqr = q3 - q1
    # ld15iqr/hd15iqr exactly as pytest-benchmark computes them (its hd15iqr
    # is the first datum past the fence when there is one).
    lo = d[bisect.bisect_left(d, q1 - 1.5 * iqr)] if len(d) > 1 else d[0]
    hi_pos = bisect.bisect_right(d, q3 + 1.5 * iqr)
    hi = d[hi_pos] if len(d) > 1 and hi_pos < len(d) else d[-1]
    sd_out = sum(1 for x in d if not mean - sd <= x <= mean + sd)
    iqr_out = sum(1 for x in d if not q1 - 1.5 * iqr <= x <= q3 + 1.5 * iqr)
    total = sum(d)
    return {
        "min": d[0], "max": d[-1], "mean": mean, "stddev": sd, "rounds": len(d),
        "median": statistics.median(d), "iqr": iqr, "q1": q1, "q3": q3,
        "iqr_outliers": iqr_out, "stddev_outliers": sd_out,
        "outliers": f"{sd_out};{iqr_out}", "ld15iqr": lo, "hd15iqr": hi,
        "ops": len(d) / total if total else 0.0, "total": total,
        "data": list(data), "iterations": 1,
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def to_json(results: Sequence[Result], *, mhz: float | None = None) -> dict[str, Any]:
    """The results in pytest-benchmark's JSON layout (``--benchmark-json``)."""
    from . import __version__

    uname = platform.uname()
    commit = _git("rev-parse", "HEAD")
    return {
        "machine_info": {
            "node": uname.node, "processor": uname.processor, "machine": uname.machine,
            "python_compiler": platform.python_compiler(),
            "python_implementation": platform.python_implementation(),
            "python_implementation_version": platform.python_version(),
            "python_version": platform.python_version(),
            "python_build": list(platform.python_build()),
            "release": uname.release, "system": uname.system,
            "cpu": {"brand_raw": cpu_model(), "count": os.cpu_count(), "hz_advertised_friendly":
                    f"{mhz:.0f} MHz" if mhz else ""},
            "memwatch": {"version": __version__, "in_guest": in_guest(), "kernel": uname.release,
                         "kernel_version": uname.version},
        },
        "commit_info": {
            "id": commit or "unversioned", "time": _git("show", "-s", "--format=%cI"),
            "author_time": _git("show", "-s", "--format=%aI"),
            "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
            "project": "memwatch", "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
        },
        "benchmarks": [
            {
                "group": r.group, "name": r.name, "fullname": f"memwatch bench::{r.name}",
                "params": None, "param": None, "extra_info": r.extra_info,
                "options": {"disable_gc": False, "timer": "perf_counter_ns",
                            "min_rounds": 1, "max_time": 0, "min_time": 0, "warmup": True},
                "stats": stats(r.data),
            }
            for r in results
        ],
        "datetime": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": "5.2.3",  # the pytest-benchmark JSON layout this follows
    }


def have_matplotlib() -> bool:
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def series(results: Sequence[Result]) -> dict[str, list[tuple[int, float]]]:
    """Cycle medians as {row: [(pages, us), ...]} for :func:`plot`."""
    rows: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r.extra_info.get("kind") == "cycle" and r.extra_info.get("api", "dirty_into") in (
                "dirty_into", "none"):
            rows.setdefault(str(r.extra_info["row"]), []).append(
                (int(r.extra_info["pages"]), r.median * 1e6))
    return rows


def plot(rows: dict[str, list[tuple[int, float]]], path: str, title: str) -> None:
    """Log-log chart of median microseconds per cycle against pages written,
    one line per row (*rows* as :func:`series` makes them; needs matplotlib)."""
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for label, pts in rows.items():
        pts = sorted(pts)
        style = ":" if label == WRITES_ONLY else "-"
        ax.plot([p for p, _ in pts], [t for _, t in pts], style, marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"pages written per cycle (of a populated {REGION}-page region)")
    ax.set_ylabel("median us per cycle (write + dirty_into(reset=True))")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def describe() -> str:
    """Kernel, machine and date, for tables and charts."""
    where = "QEMU TCG guest" if in_guest() else cpu_model()
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"Linux {platform.release()}, {where}, {os.cpu_count()} CPUs, {now}"


# --- command line ------------------------------------------------------------------------

def _pages(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}")
    if not vals or any(not 1 <= v <= REGION for v in vals):
        raise argparse.ArgumentTypeError(f"page counts must be 1..{REGION}, got {text!r}")
    return vals


def _budget(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(v) and 0 <= v <= 3600):
        raise argparse.ArgumentTypeError(f"must be 0..3600 seconds, got {text!r}")
    return v


#: One line for ``memwatch --help``, and an example for ``memwatch bench --help``.
HELP = "time a write-and-collect cycle on every available backend (the seed's table)"
EXAMPLE = "memwatch bench --json bench.json --plot bench.png"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand to the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help=HELP, description=__doc__.split("\n\n")[1] if __doc__ else None)
    configure(p)
    return p


def configure(p: argparse.ArgumentParser) -> None:
    """Add ``memwatch bench``'s options to *p*."""
    p.add_argument("--backends", type=lambda s: tuple(s.split(",")), default=None,
                   metavar="A,B", help="only these backends (default: every available one)")
    p.add_argument("--pages", type=_pages, default=PAGES, metavar="N,N",
                   help="pages written per cycle (default 1,10,100,1000,10000)")
    p.add_argument("--budget", type=_budget, default=1.0, metavar="S",
                   help="seconds per cell after 3 rounds (default 1; the run takes "
                   "about cells x S)")
    p.add_argument("--tiny", action="store_true",
                   help="a smoke run: 256-page region, pages 1,16, 3 rounds per cell")
    p.add_argument("--json", metavar="FILE", help="write pytest-benchmark JSON to FILE")
    p.add_argument("--plot", metavar="FILE.png", help="draw the log-log chart (matplotlib)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run ``memwatch bench`` as parsed by :func:`add_parser`."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.plot and not have_matplotlib():
        print("memwatch bench: --plot needs matplotlib: pip install 'memwatch[plot]'", file=err)
        return 1
    known = set(_backends.NAMES)
    if args.backends and not set(args.backends) <= known:
        bad = ", ".join(sorted(set(args.backends) - known))
        print(f"memwatch bench: unknown backend {bad} (known: {', '.join(_backends.NAMES)})",
              file=err)
        return 2
    rows = variants(args.backends)
    region, pages, budget, max_rounds = REGION, args.pages, args.budget, 200
    if args.tiny:
        region, pages, budget, max_rounds = 256, (1, 16), 0.0, 3
    print(f"# memwatch bench: {describe()}", file=out)
    print(f"# {len(rows)} rows x {len(pages)} page counts; region {region} pages; "
          f"cycle = write N pages + dirty_into(out, reset=True)", file=out, flush=True)
    results = run_cycles(rows, pages, region=region, budget=budget, max_rounds=max_rounds,
                         progress=None if args.quiet else err)
    mhz = None if in_guest() else cpu_mhz()
    print(format_table(results, mhz), file=out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(to_json(results, mhz=mhz), f, indent=2)
        print(f"# JSON: {args.json}", file=out)
    if args.plot:
        plot(series(results), args.plot, f"memwatch cycle: {describe()}")
        print(f"# chart: {args.plot}", file=out)
    return 0
