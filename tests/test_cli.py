"""``python -m memwatch``: the backends table and the watch command's errors."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from unittest import mock

import pytest
from support import BACKENDS, PAGE, Child, address_of, anon

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

    @hypothesis.settings(max_examples=150, deadline=None, database=None)
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
