"""``python -m memwatch``: the backends table and the watch command's errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import BACKENDS, PAGE, Child

import memwatch
from memwatch import _cli


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "memwatch", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_backends_table() -> None:
    proc = run("backends")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["backend", "available", "remote"]
    assert [ln.split()[0] for ln in lines[1:]] == list(BACKENDS)
    for ln in lines[1:]:
        b = BACKENDS[ln.split()[0]]
        assert ln.split()[1] == ("yes" if b.available else "no")
        if not b.available:
            assert b.reason in ln


def test_backends_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["backends"]) == 0
    assert "mprotect" in capsys.readouterr().out


def test_usage_errors() -> None:
    assert run().returncode == 2
    assert run("frobnicate").returncode == 2
    proc = run("watch", "--address", "0x1000", "--length", "4096")
    assert proc.returncode == 2 and "--pid" in proc.stderr
    proc = run("watch", "--pid", "1", "--address", "zz", "--length", "1")
    assert proc.returncode == 2 and "not an integer" in proc.stderr
    proc = run("watch", "--pid", "1", "--address", "0", "--length", "1", "--interval", "0")
    assert proc.returncode == 2
    proc = run("watch", "--pid", "1", "--address", "0", "--length", "1", "--backend", "x")
    assert proc.returncode == 2


def test_watch_missing_process() -> None:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    proc = run("watch", "--pid", str(p.pid), "--address", "0x10000", "--length", "4096")
    assert proc.returncode == 1
    assert f"no process with pid {p.pid}" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_watch_without_remote_backend() -> None:
    if any(b.available and b.remote for b in memwatch.backends()):
        pytest.skip("a remote backend is available here: see test_guest.py::test_cli_watch")
    with Child(1) as child:
        proc = run("watch", "--pid", str(child.pid), "--address", hex(child.address),
                   "--length", str(PAGE), "--count", "1")
    assert proc.returncode == 1
    assert f"cannot watch process {child.pid}" in proc.stderr
    assert "another process" in proc.stderr
    assert "Traceback" not in proc.stderr
    with Child(1) as child:
        proc = run("watch", "--pid", str(child.pid), "--address", hex(child.address),
                   "--length", str(PAGE), "--backend", "mprotect")
    assert proc.returncode == 1 and "mprotect" in proc.stderr
