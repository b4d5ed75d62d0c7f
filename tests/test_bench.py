"""`memwatch bench`: the tiny mode runs quickly and writes valid JSON.

Speed is never asserted here (benchmarks/ measures it); these check that the
command works on every available backend, counts every write (a cycle that
collects fewer pages than it wrote raises), and writes what
pytest-benchmark's readers expect.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from memwatch import _bench, backends

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    """This checkout first, then whatever the caller had on PYTHONPATH."""
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memwatch", "bench", *args], check=False,
                          cwd=ROOT, env={**_env(), **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def test_tiny_run_writes_pytest_benchmark_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = _run("--tiny", "--json", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= doc.keys()
    rows = {v.label for v in _bench.variants()}
    assert _bench.WRITES_ONLY in rows
    names = {b["name"] for b in doc["benchmarks"]}
    assert names == {f"cycle[{row}-{n:05d}]" for row in rows for n in (1, 16)}
    for b in doc["benchmarks"]:
        s = b["stats"]
        assert s["rounds"] == len(s["data"]) >= 3
        assert 0 < s["min"] <= s["q1"] <= s["median"] <= s["q3"] <= s["max"]
        assert s["median"] == sorted(s["data"])[len(s["data"]) // 2]
        assert b["extra_info"]["pages"] in (1, 16)
        assert b["group"] == f"cycle-{b['extra_info']['pages']:05d}"
    # The table names every row, and the progress went to stderr.
    for row in rows:
        assert row in r.stdout
    assert "[" in r.stderr and "pages:" in r.stderr


def test_stats_match_pytest_benchmark() -> None:
    stats_mod = pytest.importorskip("pytest_benchmark.stats")
    for data in ([3.0], [1.0, 2.0], [5.0, 1.0, 4.0], [1.0, 9.0, 2.0, 3.0, 7.0],
                 [0.5, 0.25, 8.0, 1.0, 1.5, 2.0, 30.0], [float(i % 7) for i in range(1, 40)]):
        ref = stats_mod.Stats()
        for x in data:
            ref.update(x)
        ours = _bench.stats(data)
        for f in ref.fields:
            assert ours[f] == pytest.approx(getattr(ref, f)), (f, data)


def test_plot_without_matplotlib_is_one_line(tmp_path: Path) -> None:
    # A None entry in sys.modules makes `import matplotlib` fail.
    code = ("import sys; sys.modules['matplotlib'] = None; from memwatch._cli import main; "
            f"sys.exit(main(['bench', '--tiny', '--plot', {str(tmp_path / 'x.png')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                       capture_output=True, text=True, env=_env(), timeout=60)
    assert r.returncode == 1
    assert r.stderr.strip().count("\n") == 0
    assert "matplotlib" in r.stderr and "memwatch[plot]" in r.stderr
    assert not (tmp_path / "x.png").exists()


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "chart.png"
    r = _run("--tiny", "-q", "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # kernel-independent: run on the host, not in the 6.1 guest
def test_bad_arguments_are_usage_errors() -> None:
    for args in (["--pages", "0"], ["--pages", "x"], ["--budget", "nan"]):
        r = _run(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = _run("--tiny", "--backends", "nosuch")
    assert r.returncode == 2 and "unknown backend nosuch" in r.stderr


def test_every_available_backend_is_a_row() -> None:
    labels = [v.label for v in _bench.variants()]
    for b in backends():
        if b.available:
            assert b.name in labels
    if "syscall" in labels:
        assert "syscall/default" in labels
