"""The ``memwatch`` command (``python -m memwatch``): info, watch, demo, the
Prometheus exporter; guest-marked tests at the end watch another process."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import mmap
import os
import pty
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from support import (
    ALL_BACKENDS,
    BACKENDS,
    IN_GUEST,
    PAGE,
    Child,
    address_of,
    anon,
    skip_reason,
)

import memwatch
from memwatch import _cli, _top


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


def _examples(n: int) -> int:
    """Hypothesis examples of the argument fuzzers: *n* on the host, a fifth
    under QEMU TCG (50-70 s each there).  They still run in the guests, the
    only place where `watch PID` meets a real remote backend."""
    return n // 5 if IN_GUEST else n


@pytest.mark.slow  # kernel-independent: run on the host, not in the 6.1 guest
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


def test_local_backend_refused_by_argparse() -> None:
    """A backend that cannot watch another process is a usage error naming
    the ones that can (not "cannot watch another process here: cannot watch
    another process")."""
    proc = run("watch", "--pid", "1", "--address", "0x1000", "--length", "4096",
               "--backend", "pagemap_scan")
    assert proc.returncode == 2
    assert "invalid choice: 'pagemap_scan'" in proc.stderr
    assert "'syscall'" in proc.stderr and "'softdirty'" in proc.stderr
    assert "Traceback" not in proc.stderr


BAD_VALUES = [
    ("--interval", "inf"), ("--interval", "1e308"), ("--interval", "nan"),
    ("--interval", "-1"), ("--interval", "0"), ("--interval", "x"),
    ("--pid", "99999999999999999999"), ("--pid", "-3"), ("--pid", "0"),
    ("--address", "-1"), ("--address", hex(1 << 64)), ("--address", "0x"),
    ("--length", "0"), ("--length", "-5"), ("--length", str((1 << 64) + 1)),
    ("--count", "-1"), ("--count", "1.5"),
]


@pytest.mark.parametrize("option,value", BAD_VALUES,
                         ids=[f"{o}={v}" for o, v in BAD_VALUES])
def test_bad_values_are_one_line_usage_errors(
    option: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = {"--pid": "1", "--address": "0x1000", "--length": "4096"}
    args[option] = value
    argv = ["watch"] + [x for kv in args.items() for x in kv]
    with pytest.raises(SystemExit) as info:  # argparse's usage error: exit 2
        _cli.main(argv)
    assert info.value.code == 2
    stderr = capsys.readouterr().err
    last = stderr.strip().splitlines()[-1]
    assert f"argument {option}:" in last, last
    assert repr(value) in last, last


def test_bad_value_in_a_subprocess_has_no_traceback() -> None:
    proc = run("watch", "--pid", "1", "--address", "0x1000", "--length", "4096",
               "--interval", "inf")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("got 'inf'")


@pytest.mark.parametrize("interval", ["inf", "1e308"])
def test_interval_inf_on_a_live_watch(interval: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Newcomer M6: with a Watch already open (our own pid is "this
    process", so any backend works), --interval inf crashed with
    OverflowError from time.sleep()."""
    with anon(4) as m:
        argv = ["watch", "--pid", str(os.getpid()), "--address", hex(address_of(m)),
                "--length", str(4 * PAGE), "--interval", interval, "--count", "1"]
        with pytest.raises(SystemExit) as info:
            _cli.main(argv)
    assert info.value.code == 2
    assert "--interval" in capsys.readouterr().err


def test_watch_own_process_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    with anon(4) as m:
        addr = address_of(m)
        argv = ["watch", "--pid", str(os.getpid()), "--address", hex(addr),
                "--length", str(4 * PAGE), "--interval", "1e-6", "--count", "2"]
        assert _cli.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"# pid {os.getpid()} address {addr:#x}")
    assert len(out) == 3


def test_watch_unmapped_range_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A range that is not mapped: exit 1 and one line naming it (our own
    pid, so that every host has a backend for it)."""
    remote = [b.name for b in memwatch.backends() if b.available and b.remote]
    if remote:
        pytest.skip(
            f"{remote[0]} is available here: it reads page tables and watches a hole "
            "as clean pages, so there is no unmapped range to refuse"
        )
    argv = ["watch", "--pid", str(os.getpid()), "--address", "0x0", "--length", str(PAGE),
            "--count", "1"]
    assert _cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"memwatch: cannot watch 0x0+{PAGE:#x} in process {os.getpid()}: ")
    assert "is not entirely mapped" in err[0]


def test_random_arguments_never_raise(capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever the values, main() returns an exit status or exits through
    argparse (status 2): never another exception, never a traceback."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    numbers = st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.integers(0, 2**64).map(hex),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.sampled_from(["", "0x", "1e3", "-0", "inf", "nan", "0b101", "1_000", " 7"]),
        st.text(max_size=6),
    )

    @hypothesis.settings(max_examples=_examples(150), deadline=None, database=None)
    @hypothesis.given(address=numbers, length=numbers, interval=numbers, count=numbers,
                      own=st.booleans())
    def run(address: str, length: str, interval: str, count: str, own: bool) -> None:
        pid = str(os.getpid()) if own else "4194304"
        argv = ["watch", "--pid", pid, "--address", address, "--length", length,
                "--interval", interval, "--count", count]
        try:
            rc = _cli.main(argv)
        except SystemExit as e:
            assert e.code == 2, argv
        else:
            assert rc in (0, 1, 130), (argv, rc)
        capsys.readouterr()

    def sleep(seconds: float) -> None:
        # What time.sleep() accepts on every platform; then stop the loop as
        # Ctrl-C would (exit status 130), so no example polls for long.
        assert isinstance(seconds, float) and 0 < seconds <= 86400, seconds
        raise KeyboardInterrupt

    with mock.patch.object(_cli.time, "sleep", sleep):
        run()


def test_reader_going_away_is_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m memwatch watch ... | head -1`: the pipe closes after the
    first line; the next print must not end in a BrokenPipeError traceback."""
    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    with anon(2) as m:
        monkeypatch.setattr(sys, "stdout", ClosedPipe())
        argv = ["watch", "--pid", str(os.getpid()), "--address", hex(address_of(m)),
                "--length", str(2 * PAGE), "--interval", "1e-6", "--count", "3"]
        assert _cli.main(argv) == 141


# -- memwatch info / --help / the console script (issue 9, item 1) ----------------


def test_every_command_has_help_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    names = [c.name for c in _cli.COMMANDS]
    assert {"info", "backends", "watch", "demo"} <= set(names)
    for name in names:
        with pytest.raises(SystemExit) as info:
            _cli.main([name, "--help"])
        assert info.value.code == 0
        text = capsys.readouterr().out
        assert "example:\n  memwatch " + name in text, text
    with pytest.raises(SystemExit):
        _cli.main(["--help"])
    top = capsys.readouterr().out
    for name in names:
        assert f"    {name} " in top


def test_console_script_is_declared() -> None:
    """pyproject's [project.scripts] names the function __main__ runs too."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    if 'memwatch = "memwatch._cli:console_main"' not in text:
        pytest.fail("pyproject.toml lacks memwatch = \"memwatch._cli:console_main\"")
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.strip() == f"memwatch {memwatch.__version__}"


def test_info_json_matches_this_machine() -> None:
    proc = run("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["kernel"] == os.uname().release
    assert [b["name"] for b in info["backends"]] == list(BACKENDS)
    for b in info["backends"]:
        assert b["available"] == BACKENDS[b["name"]].available
        assert b["remote"] == BACKENDS[b["name"]].remote
        assert b["why"]
    settings = {s["setting"]: s for s in info["settings"]}
    # Soft-dirty comes from the probe, not from /proc/config.
    assert settings["CONFIG_MEM_SOFT_DIRTY"]["value"] == (
        "yes" if BACKENDS["softdirty"].available else "no")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp.exists():
        text = thp.read_text()
        assert settings["transparent_hugepage"]["value"] == text[text.index("[") + 1:
                                                                  text.index("]")]
    unpriv = Path("/proc/sys/vm/unprivileged_userfaultfd")
    if unpriv.exists():
        assert settings["vm.unprivileged_userfaultfd"]["value"] == unpriv.read_text().strip()
    scope = Path("/proc/sys/kernel/yama/ptrace_scope")
    assert settings["kernel.yama.ptrace_scope"]["value"] == (
        scope.read_text().strip() if scope.exists() else "absent")
    # What auto picks is what Watch() picks.
    with anon(1) as m, memwatch.Watch(m) as w:
        assert info["auto"]["this_process"] == w.backend
    remote = [b.name for b in BACKENDS.values() if b.available and b.remote]
    assert info["auto"]["other_process"] == (remote[0] if remote else None)
    assert sum(r["chosen"] for r in info["auto"]["this_process_why"]) == 1


def test_info_table() -> None:
    proc = run("info")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for setting in ("CONFIG_MEM_SOFT_DIRTY", "userfaultfd", "vm.unprivileged_userfaultfd",
                    "transparent_hugepage", "ptrace_scope"):
        assert setting in out
    for b in BACKENDS.values():
        row = next(ln for ln in out.splitlines() if ln[1:].startswith(b.name + " "))
        if not b.available:
            assert b.reason in row
    chosen = [ln for ln in out.splitlines() if ln.startswith("*")]
    assert len(chosen) == 1
    assert "auto for this process" in out and "auto for another process" in out


@pytest.mark.slow  # kernel-independent: run on the host, not in the 6.1 guest
def test_dashdash_is_only_for_watch() -> None:
    proc = run("info", "--", "ls")
    assert proc.returncode == 2 and "only 'watch' runs a command" in proc.stderr
    proc = run("watch", "--")
    assert proc.returncode == 2 and "give the command to run after --" in proc.stderr
    proc = run("watch")
    assert proc.returncode == 2 and "watch needs a PID" in proc.stderr
    for proc in (run("watch", "--prometheus", "nope", "1"),
                 run("watch", "--prometheus", "127.0.0.1:70000", "1"),
                 run("watch", "--prometheus", "127.0.0.1:http", "1")):
        assert proc.returncode == 2 and "--prometheus" in proc.stderr
        assert "Traceback" not in proc.stderr


# -- memwatch watch PID / -- CMD on this host --------------------------------------

NO_REMOTE = not any(b.available and b.remote for b in BACKENDS.values())


@pytest.mark.skipif(not NO_REMOTE, reason="a remote backend is available here: the "
                    "guest tests below run watch for real")
def test_watch_says_no_mechanism_can_watch_another_process(tmp_path: Path) -> None:
    """This host (6.18, no CONFIG_MEM_SOFT_DIRTY, no process_memwatch): exit
    1, one line naming why each remote mechanism is missing, and a command
    given after -- is not even started."""
    marker = tmp_path / "started"
    with Child(1) as child:
        for args in ([str(child.pid)], ["--json", str(child.pid)],
                     ["--", "touch", str(marker)]):
            proc = run("watch", *args)
            assert proc.returncode == 1, proc
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1, lines
            assert "no memwatch backend can watch another process here" in lines[0]
            for name in ("syscall", "softdirty"):
                assert f"{name}: {BACKENDS[name].reason}" in lines[0]
    assert not marker.exists()
    assert "'touch' (not started)" in proc.stderr


class _Mapped:
    """A private mapping of a file of *npages* pages in this process: its own
    VMA (never merged with the interpreter's anonymous memory), named by
    path in /proc/PID/maps."""

    def __init__(self, path: Path, npages: int) -> None:
        self.path = path
        with open(path, "wb") as f:
            f.truncate(npages * PAGE)
        with open(path, "r+b") as f:
            self.m = mmap.mmap(f.fileno(), npages * PAGE, flags=mmap.MAP_PRIVATE)
        self.address = address_of(self.m)

    def write(self, pages: range) -> None:
        for p in pages:
            self.m[p * PAGE] = (self.m[p * PAGE] + 1) & 0xFF

    def close(self) -> None:
        self.m.close()


def _own_args(*extra: str) -> argparse.Namespace:
    """``watch OWN_PID``; the tests patch time.sleep to act between samples,
    and a long --interval makes sure the loop calls it every time (a sample
    that comes late does not sleep)."""
    args = _cli.build_parser().parse_args(["watch", str(os.getpid()), "--interval", "1000",
                                           *extra])
    args.command = []
    return args


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_json_counts_pages_per_mapping(tmp_path: Path) -> None:
    """The whole-process path on memwatch's own pid (the one process any
    backend here can watch), narrowed to two file mappings: every sample is
    one JSON line; writes between samples are counted exactly; a mapping that
    appears or goes away is listed."""
    a = _Mapped(tmp_path / "a", 32)
    a.write(range(32))  # populated before the watch: not counted
    created: list[_Mapped] = []
    steps = [
        lambda: a.write(range(10)),
        lambda: created.append(_Mapped(tmp_path / "b", 4)),
        lambda: (created[0].write(range(3)), a.write(range(5, 7))),
        lambda: created[0].close(),
    ]

    def sleep(seconds: float) -> None:
        steps.pop(0)()

    out, err = io.StringIO(), io.StringIO()
    try:
        with mock.patch.object(_cli.time, "sleep", sleep):
            rc = _cli.watch_processes(
                _own_args("--json", "--count", "4"), out, err,
                only=lambda m: m.path.startswith(str(tmp_path)))
    finally:
        a.close()
    assert rc == 0, err.getvalue()
    lines = [json.loads(ln) for ln in out.getvalue().splitlines()]
    assert len(lines) == 4
    for ln in lines:
        assert ln["pid"] == os.getpid() and ln["errors"] == [] and not ln["exited"]
    pages = [{m["name"]: m["pages"] for m in ln["mappings"]} for ln in lines]
    assert pages == [{str(a.path): 10}, {}, {str(a.path): 2, str(tmp_path / "b"): 3}, {}]
    assert [ln["pages"] for ln in lines] == [10, 0, 5, 0]
    assert [[m["name"] for m in ln["appeared"]] for ln in lines] == [
        [], [str(tmp_path / "b")], [], []]
    assert [[m["name"] for m in ln["gone"]] for ln in lines] == [
        [], [], [], [str(tmp_path / "b")]]
    assert [ln["watched"] for ln in lines] == [1, 2, 2, 1]


def test_watch_text_busiest_first(tmp_path: Path) -> None:
    a, b = _Mapped(tmp_path / "a", 8), _Mapped(tmp_path / "b", 8)

    def sleep(seconds: float) -> None:
        a.write(range(2))
        b.write(range(6))

    out, err = io.StringIO(), io.StringIO()
    try:
        with mock.patch.object(_cli.time, "sleep", sleep):
            rc = _cli.watch_processes(_own_args("--count", "1"), out, err,
                                      only=lambda m: m.path.startswith(str(tmp_path)))
    finally:
        a.close()
        b.close()
    assert rc == 0
    lines = out.getvalue().splitlines()
    assert f"pid {os.getpid()} " in lines[0] and ": 8 pages in " in lines[0]
    assert lines[1].split()[:3] == ["PID", "PAGES", "MiB/s"]
    rows = lines[2:]
    assert [r.split()[-1] for r in rows] == [str(b.path), str(a.path)]
    assert [int(r.split()[1]) for r in rows] == [6, 2]
    assert "\x1b" not in out.getvalue()  # not a terminal: plain lines


def test_watch_on_a_terminal_redraws_and_restores_it(tmp_path: Path) -> None:
    """ANSI redraw on a tty, and Ctrl-C (here on the second interval) leaves
    the cursor visible and the prompt on a fresh line."""
    a = _Mapped(tmp_path / "a", 8)
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 2:
            raise KeyboardInterrupt
        a.write(range(3))

    out = _Tty()
    try:
        with mock.patch.object(_cli.time, "sleep", sleep), pytest.raises(KeyboardInterrupt), \
                mock.patch.object(_cli.shutil, "get_terminal_size",
                                  lambda: os.terminal_size((400, 30))):
            _cli.watch_processes(_own_args(), out, io.StringIO(),
                                 only=lambda m: m.path.startswith(str(tmp_path)))
    finally:
        a.close()
    text = out.getvalue()
    assert text.startswith("\x1b[?25l\x1b[H\x1b[2Jmemwatch watch: ")
    assert text.endswith("\x1b[?25h\n")
    assert str(a.path) in text and ": 3 pages in " in text


def test_watch_on_a_narrow_terminal_keeps_the_end_of_paths(tmp_path: Path) -> None:
    a = _Mapped(tmp_path / ("x" * 60 + "-the-end"), 4)

    def sleep(seconds: float) -> None:
        a.write(range(1))

    out = _Tty()
    try:
        with mock.patch.object(_cli.time, "sleep", sleep), \
                mock.patch.object(_cli.shutil, "get_terminal_size",
                                  lambda: os.terminal_size((80, 24))):
            _cli.watch_processes(_own_args("--count", "1"), out, io.StringIO(),
                                 only=lambda m: m.path.startswith(str(tmp_path)))
    finally:
        a.close()
    view = out.getvalue().split("\x1b[2J")[1].removesuffix("\x1b[?25h\n")
    rows = [ln for ln in view.splitlines() if "rw-p" in ln]
    assert len(rows) == 1 and rows[0].endswith("xx-the-end") and "..." in rows[0]
    assert len(rows[0]) == 80


def test_watch_own_process_with_prometheus_missing(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Without prometheus_client: one line saying how to get it, exit 1."""
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    rc = _cli.main(["watch", str(os.getpid()), "--prometheus", "127.0.0.1:0", "--count", "1"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [("memwatch: --prometheus needs the prometheus_client package: "
                   "pip install 'memwatch[prometheus]' (or pip install prometheus_client)")]


# -- Prometheus (issue 9, item 2) ---------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    parser = pytest.importorskip("prometheus_client.parser")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text)
            for s in family.samples}


def test_prometheus_exposition_over_loopback(tmp_path: Path) -> None:
    """The exporter's numbers, scraped over HTTP, are the pages written: the
    watcher runs on memwatch's own pid (so any backend works on any host),
    narrowed to one file mapping that gets exactly 10 + 4 page writes."""
    pytest.importorskip("prometheus_client")
    from memwatch._prometheus import Exporter
    from memwatch._top import ProcessWatcher

    a = _Mapped(tmp_path / "a", 16)
    exporter = Exporter("127.0.0.1", 0)
    watcher = ProcessWatcher(os.getpid(), only=lambda m: m.start == a.address)
    try:
        exporter.record(watcher.sample())
        a.write(range(10))
        exporter.record(watcher.sample())
        a.write(range(12, 16))
        exporter.record(watcher.sample())
        got = _scrape(exporter.port)
    finally:
        watcher.close()
        exporter.close()
        a.close()
    proc = (("command", _top.read_command(os.getpid())), ("pid", str(os.getpid())))
    labels = tuple(sorted((*proc, ("mapping", str(a.path)))))
    assert got[("memwatch_pages_written_total", labels)] == 14
    assert got[("memwatch_process_pages_written_total", proc)] == 14
    assert got[("memwatch_scans_total", proc)] == 3
    assert got[("memwatch_errors_total", proc)] == 0
    assert got[("memwatch_watched_mappings", proc)] == 1
    assert 0 < got[("memwatch_scan_seconds_total", proc)] < 60


def test_prometheus_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("prometheus_client")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        rc = _cli.main(["watch", str(os.getpid()), "--prometheus", f"127.0.0.1:{port}",
                        "--count", "1"])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"memwatch: cannot serve Prometheus metrics on 127.0.0.1:{port}: "), err


# -- memwatch demo ------------------------------------------------------------------


def test_demo_subprocess() -> None:
    """What the README's first command runs, on this machine's default."""
    proc = run("demo", "--frames", "30")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 32
    frames = [ln for ln in lines if ln.startswith("frame")]
    for ln in frames:
        # "frame    1: pages written   3, dirty   3, poll     26.4 us"
        written, dirty = int(ln.split()[4].rstrip(",")), int(ln.split()[6].rstrip(","))
        assert dirty >= written, ln  # never a lost write
    assert lines[-1].startswith("summary: 30 frames on ")
    assert ", 0 missed," in lines[-1]


@pytest.mark.parametrize("name", [n for n in ALL_BACKENDS if n != "softdirty"])
def test_demo_on_each_backend(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if skip_reason(name):
        pytest.skip(skip_reason(name) or "")
    assert _cli.main(["demo", "--backend", name, "--frames", "20", "--rate", "1000",
                      "--size", "4", "--pages", "5", "-q"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert out[-1].startswith(f"summary: 20 frames on {name}: ")
    assert ", 0 missed," in out[-1]


@pytest.mark.slow  # kernel-independent: run on the host, not in the 6.1 guest
def test_demo_bad_values_are_usage_errors() -> None:
    for args in (["--frames", "0"], ["--rate", "inf"], ["--size", "0"],
                 ["--backend", "softdirty"], ["--pages", "x"]):
        proc = run("demo", *args)
        assert proc.returncode == 2, args
        assert "Traceback" not in proc.stderr


# -- the real thing: watching another process (QEMU guest) ---------------------------

_FILE_CHILD = """
import mmap, sys
def mapped(path, n):
    with open(path, "wb") as f:
        f.truncate(n * mmap.PAGESIZE)
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), n * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
maps = {"a": mapped(sys.argv[1] + "/a", 32)}
for i in range(32):
    maps["a"][i * mmap.PAGESIZE] = 1       # populated before any watch
print("ready", file=sys.stderr, flush=True)
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "q":
        sys.exit(3)
    if cmd[0] == "w":                        # w NAME FIRST END: write pages FIRST..END-1
        m = maps[cmd[1]]
        for i in range(int(cmd[2]), int(cmd[3])):
            m[i * mmap.PAGESIZE] = (m[i * mmap.PAGESIZE] + 1) & 0xFF
    elif cmd[0] == "map":
        maps[cmd[1]] = mapped(sys.argv[1] + "/" + cmd[1], 4)
    elif cmd[0] == "unmap":
        maps.pop(cmd[1]).close()
    print("ok", file=sys.stderr, flush=True)
"""

REMOTE = [n for n in ("syscall", "softdirty")]
needs_remote = pytest.mark.skipif(
    NO_REMOTE, reason="watching another process needs process_memwatch or "
    "CONFIG_MEM_SOFT_DIRTY: the QEMU guest kernel (pytest -m guest in ci/vm-run.sh); "
    "this host has neither")


class _FileChild:
    """A Python child with private file mappings under *folder*, writing
    pages on command (replies on stderr, so that it can run under
    ``memwatch watch -- CMD`` whose stdout is memwatch's)."""

    def __init__(self, folder: Path, under: list[str] | None = None, **kw: Any) -> None:
        self.folder = folder
        self.proc = subprocess.Popen(
            [*(under or []), sys.executable, "-c", _FILE_CHILD, str(folder)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def expect(self, prefix: str, timeout: float = 120) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            if line.startswith(prefix):
                return line
            if line == "":
                raise AssertionError(f"stderr ended before {prefix!r}")

    def do(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if command != "q":
            self.expect("ok")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError):
                self.do("q")
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.guest
@needs_remote
@pytest.mark.parametrize("name", REMOTE)
def test_guest_watcher_counts_another_process(name: str, tmp_path: Path) -> None:
    """Exact page counts per mapping of another process, mappings appearing
    and going away, with each remote mechanism."""
    if skip_reason(name):
        pytest.skip(skip_reason(name) or "")
    if not BACKENDS[name].partial_reset:
        pytest.skip(f"{name} cannot keep several Watches on one process here (no "
                    "partial reset: clear_refs clears the whole process); r10's registry "
                    "change makes Backend('softdirty').partial_reset True")
    child = _FileChild(tmp_path)
    try:
        child.expect("ready")
        a, b = str(tmp_path / "a"), str(tmp_path / "b")
        with _top.ProcessWatcher(child.proc.pid, backend=name,
                                 only=lambda m: m.path.startswith(str(tmp_path))) as w:
            assert w.backend == name
            first = w.sample()
            assert [m.name for m in first.appeared] == [a] and first.pages == 0
            child.do("w a 0 10")
            s = w.sample()
            assert {m.mapping.name: m.pages for m in s.mappings} == {a: 10}
            child.do("map b")
            s = w.sample()
            assert [m.name for m in s.appeared] == [b] and s.pages == 0
            child.do("w b 0 3")
            child.do("w a 30 32")
            s = w.sample()
            assert [(m.mapping.name, m.pages) for m in s.mappings] == [(b, 3), (a, 2)]
            child.do("unmap b")
            s = w.sample()
            assert [m.name for m in s.gone] == [b] and s.pages == 0 and s.errors == []
            child.do("q")
            child.proc.wait(timeout=60)
            s = w.sample()
            assert s.exited
    finally:
        child.close()


@pytest.mark.guest
@needs_remote
def test_guest_watch_command_json_and_prometheus(tmp_path: Path) -> None:
    """`memwatch watch --json --prometheus 127.0.0.1:0 -- CMD`: the JSON lines
    and a loopback scrape both count exactly the pages the command wrote, and
    memwatch exits with the command's status."""
    pytest.importorskip("prometheus_client")
    out = tmp_path / "out.jsonl"
    with open(out, "w") as stdout:
        child = _FileChild(
            tmp_path,
            under=[sys.executable, "-m", "memwatch", "watch", "--json", "--interval", "0.3",
                   "--prometheus", "127.0.0.1:0", "--"],
            stdout=stdout)
        try:
            port = int(child.expect("memwatch: serving Prometheus metrics on ")
                       .rsplit(":", 1)[1].split("/")[0])
            child.expect("ready")

            def lines() -> list[dict[str, Any]]:
                return [json.loads(ln) for ln in out.read_text().splitlines()]

            def wait_lines(n: int) -> None:
                deadline = time.monotonic() + 120
                while len(lines()) < n:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)

            a = str(tmp_path / "a")
            # The command maps "a" a while after it starts: wait for the
            # sample that saw it appear (a Watch is open on it from then on).
            deadline = time.monotonic() + 120
            while not any(m["name"] == a for ln in lines() for m in ln["appeared"]):
                assert time.monotonic() < deadline, lines()
                time.sleep(0.1)
            child.do("w a 0 7")
            child.do("w a 20 23")
            seen = len(lines())
            wait_lines(seen + 2)  # a sample that started after the writes
            got = _scrape(port)
            child.do("q")
            assert child.proc.wait(timeout=120) == 3
        finally:
            child.close()
    samples = lines()
    pid = samples[0]["pid"]
    assert sum(m["pages"] for s in samples for m in s["mappings"] if m["name"] == a) == 10
    assert samples[-1]["exited"]
    proc = (("command", "python3"), ("pid", str(pid)))
    assert got[("memwatch_pages_written_total",
                tuple(sorted((*proc, ("mapping", a)))))] == 10
    assert got[("memwatch_process_pages_written_total", proc)] >= 10
    assert got[("memwatch_errors_total", proc)] == 0


@pytest.mark.guest
@needs_remote
def test_guest_ctrl_c_restores_the_terminal(tmp_path: Path) -> None:
    """On a real terminal (a pty): the view is redrawn with ANSI codes, and
    SIGINT ends memwatch with status 130, the cursor shown again."""
    child = _FileChild(tmp_path)
    master, slave = pty.openpty()
    try:
        child.expect("ready")
        proc = subprocess.Popen(
            [sys.executable, "-m", "memwatch", "watch", str(child.proc.pid),
             "--interval", "0.3"], stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 120
        while seen.count(b"\x1b[H\x1b[2J") < 2:
            assert time.monotonic() < deadline, seen
            seen += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        with contextlib.suppress(OSError):  # EIO once the slave side is closed
            while chunk := os.read(master, 65536):
                seen += chunk
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
    finally:
        os.close(master)
        child.close()
    assert seen.startswith(b"\x1b[?25l")
    assert seen.rstrip(b"\r\n").endswith(b"\x1b[?25h")
    assert b"PAGES" in seen


def test_watcher_refuses_a_thread_id() -> None:
    """A thread id is not a process: pidfd_open() says EINVAL, memwatch says why."""
    ready, stop = threading.Event(), threading.Event()
    tids: list[int] = []

    def body() -> None:
        tids.append(threading.get_native_id())
        ready.set()
        stop.wait(60)

    t = threading.Thread(target=body)
    t.start()
    try:
        ready.wait(60)
        with mock.patch.object(_top._backends, "choose"), \
                pytest.raises(ValueError, match=f"{tids[0]} is a thread of process {os.getpid()}, "):
            _top.ProcessWatcher(tids[0])
    finally:
        stop.set()
        t.join()


def test_random_watch_and_info_arguments_never_raise(capsys: pytest.CaptureFixture[str]) -> None:
    """The new surfaces (watch PID..., --json/--prometheus/--rows, info,
    demo options): an exit status or argparse's 2, never another exception."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    word = st.one_of(
        st.integers(-(2**40), 2**40).map(str),
        st.sampled_from(["--json", "--quiet", "--rows", "--count", "--interval",
                         "--prometheus", "--backend", "-q", "--pid", "0", "1",
                         "127.0.0.1:0", ":0", "[::1]:x", "syscall", "auto", "nan", "1e9"]),
        st.text(max_size=5),
    )
    command = st.sampled_from(["watch", "info", "backends", "demo"])

    @hypothesis.settings(max_examples=_examples(200), deadline=None, database=None)
    @hypothesis.given(cmd=command, words=st.lists(word, max_size=6))
    def run(cmd: str, words: list[str]) -> None:
        # No "--": this test never starts a command (in the guest one would run).
        words = [w for w in words if w != "--"]
        if cmd == "demo":  # keep any demo that parses tiny
            words += ["--frames", "1", "--size", "1"]
        argv = [cmd, *words]
        try:
            rc = _cli.main(argv)
        except SystemExit as e:
            assert e.code in (0, 2), argv
        else:
            assert rc in (0, 1, 2, 130), (argv, rc)
        capsys.readouterr()

    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    with mock.patch.object(_cli.time, "sleep", sleep):
        run()


def test_a_mapping_that_cannot_be_watched_is_reported_once(tmp_path: Path) -> None:
    """uffd refuses a MAP_SHARED file mapping: the sample that meets it says
    so (one error line naming it), later samples do not retry it, and the
    error counter counts it once."""
    if skip_reason("uffd"):
        pytest.skip(skip_reason("uffd") or "")
    path = tmp_path / "shared"
    path.write_bytes(bytes(4 * PAGE))
    with open(path, "r+b") as f:
        m = mmap.mmap(f.fileno(), 4 * PAGE, flags=mmap.MAP_SHARED)
    try:
        try:
            memwatch.Watch(m, backend="uffd").close()
        except OSError:
            pass
        else:
            # The guest's tmp dir is a tmpfs: uffd-wp works on shmem (Linux
            # 5.19+, Debian's 6.1 and 6.18 alike; sound for writes through
            # the watched mapping, test_uffd_hardening's shmem test).  Only a
            # disk file system (the host's tmp dir) is refused.
            pytest.skip(f"uffd accepts a MAP_SHARED mapping of {path.parent} (a tmpfs: "
                        f"uffd-wp works on shmem): nothing to refuse")
        with _top.ProcessWatcher(os.getpid(), backend="uffd",
                                 only=lambda x: x.path == str(path)) as w:
            first = w.sample()
            second = w.sample()
    finally:
        m.close()
    assert len(first.errors) == 1 and str(path) in first.errors[0], first.errors
    assert "uffd" in first.errors[0]
    assert second.errors == [] and second.mappings == []
    assert w.total_errors == 1
