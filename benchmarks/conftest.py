"""Shared pieces of the benchmarks, and the summary tables printed last.

``pytest benchmarks/`` collects every ``bench_*.py`` here (the default test
run, ``testpaths = ["tests"]``, never does).  Sizes shrink in two cases:

* ``--benchmark-disable`` (the CI smoke pass, ci/test.sh): every benchmark
  runs once on its smallest configuration, to keep them from rotting;
* ``MEMWATCH_IN_GUEST=1`` (ci/bench-guest.sh): a TCG guest runs Python 15-35x
  slower and has little RAM, so the largest sizes are left out.

``MEMWATCH_BENCH_MAX_MIB`` caps the populated sizes (default 4096 on a host,
64 in the guest); ``MEMWATCH_BENCH_BACKENDS=a,b`` limits the backends.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from ratios import tables

import memwatch

GUEST = os.environ.get("MEMWATCH_IN_GUEST") == "1"
MAX_MIB = int(os.environ.get("MEMWATCH_BENCH_MAX_MIB", "64" if GUEST else "4096"))


def available(*, partial_reset: bool = False) -> list[str]:
    """The backends to benchmark here."""
    names = [b.name for b in memwatch.backends()
             if b.available and (b.partial_reset or not partial_reset)]
    wanted = os.environ.get("MEMWATCH_BENCH_BACKENDS")
    if wanted:
        names = [n for n in names if n in wanted.split(",")]
    return names


def smoke(config: pytest.Config) -> bool:
    """True in the one-round smoke pass (--benchmark-disable)."""
    return bool(config.getoption("benchmark_disable", False))


def vm_kib(field: str) -> int:
    """A ``Vm*`` field of /proc/self/status in KiB (VmRSS, VmPTE, ...)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # bench_*.py are benchmark modules; a path named on the command line is
    # collected by pytest itself already.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Print the summary tables after everything else (pytest-benchmark's
    tables are printed by its own, earlier, terminal-summary hook)."""
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for bench in getattr(session, "benchmarks", None) or []:
        info = getattr(bench, "extra_info", {}) or {}
        if "kind" in info and bench:
            rows.append({**info, "median": bench.stats.median})
    if rows:
        terminalreporter.write_sep("=", "memwatch: summary tables (medians; ratios from this run)")
        terminalreporter.write_line(tables(rows))
