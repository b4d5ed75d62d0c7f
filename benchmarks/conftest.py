"""Print the median-ratio table (ratios.py) after a benchmark run."""

from __future__ import annotations

from typing import Any

import pytest
from ratios import table


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    session = getattr(config, "_benchmarksession", None)
    rows = []
    for bench in getattr(session, "benchmarks", None) or []:
        info = getattr(bench, "extra_info", {}) or {}
        if {"backend", "api", "pages"} <= info.keys() and bench:
            rows.append({**info, "median": bench.stats.median})
    if rows:
        terminalreporter.write_sep("=", "memwatch: median per call, ratios to the raw binding")
        terminalreporter.write_line(table(rows))
