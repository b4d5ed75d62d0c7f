"""What a Watch asks for (``atomic=``, ``kernel_writes=``, ``partial_reset=``)
and what ``backend="auto"`` takes for it (memwatch/_backends.py, issue 10).

Host tests use the real mechanisms of this kernel (pagemap_scan, uffd,
mprotect on 6.18); to make two of them compete, the others' probes are
masked as unavailable (the trackers chosen are real).  The tests marked
``guest`` check the choices that differ on the stock 6.1 kernel (uffd,
softdirty, mprotect) and on the patched one (all five); on any other kernel
they skip saying which backends they need.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import BACKENDS, PAGE, Child, anon

import memwatch
from memwatch import _backends

ROOT = Path(__file__).resolve().parents[1]
TRI = (None, False, True)
PREFIXES = ("chosen: ", "could be chosen, but ranked lower: ", "cannot ", "unavailable here: ")


def only(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make every backend but *names* unavailable (their real probe is kept)."""
    for name in names:
        if not BACKENDS[name].available:
            pytest.skip(f"needs the {name} backend: {BACKENDS[name].reason}")
    real = _backends._probe

    def probe(name: str) -> tuple[bool, str]:
        if name in names:
            return real(name)
        return False, f"{name} ruled out by the test"

    monkeypatch.setattr(_backends, "_probe", probe)


def rows(**asked: object) -> dict[str, _backends.Choice]:
    return {c.backend.name: c for c in _backends.explain(**asked)}  # type: ignore[arg-type]


def readv_into(m: object, page: int) -> None:
    """The kernel writes 10 bytes into *page* of *m* (os.readv from a pipe)."""
    r, w = os.pipe()
    try:
        os.write(w, b"k" * 10)
        view = memoryview(m)[page * PAGE: page * PAGE + 10]  # type: ignore[arg-type]
        try:
            assert os.readv(r, [view]) == 10
        finally:
            view.release()
    finally:
        os.close(r)
        os.close(w)


@pytest.fixture
def mem() -> Iterator[object]:
    with anon(4) as m:
        yield m


# -- arguments -----------------------------------------------------------------


@pytest.mark.parametrize("keyword", _backends.REQUIREMENTS)
@pytest.mark.parametrize("value", [1, 0, "yes", 1.0])
def test_requirement_must_be_true_false_or_none(mem: object, keyword: str, value: object) -> None:
    with pytest.raises(TypeError, match=f"{keyword} must be True .required., False"):
        memwatch.Watch(mem, **{keyword: value})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=keyword):
        _backends.explain(**{keyword: value})  # type: ignore[arg-type]
    if keyword != "partial_reset":
        with pytest.raises(TypeError, match=keyword):
            memwatch.alloc(PAGE, **{keyword: value})  # type: ignore[arg-type]
    with memwatch.Watch(mem) as w:  # nothing was left registered
        mem[0] = 1  # type: ignore[index]
        assert list(w.dirty()) == [0]


def test_requirements_are_keyword_only(mem: object) -> None:
    with pytest.raises(TypeError):
        memwatch.Watch(mem, None, None, "auto", True)  # type: ignore[misc]


# -- a named backend -------------------------------------------------------------


def test_named_backend_lacking_a_required_capability(mem: object) -> None:
    """mprotect cannot see kernel writes anywhere: asking for both is a
    contradiction (ValueError) and a "this backend cannot" (UnsupportedError)."""
    if not BACKENDS["mprotect"].available:
        pytest.skip(BACKENDS["mprotect"].reason)
    with pytest.raises(memwatch.CapabilityError) as info:
        memwatch.Watch(mem, backend="mprotect", kernel_writes=True)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, memwatch.UnsupportedError)
    assert err.errno == errno.EOPNOTSUPP
    msg = str(err)
    assert msg.startswith("backend 'mprotect' cannot see writes made by the kernel")
    assert "EFAULT" in msg and "kernel_writes=True" in msg
    assert err.requirement == "see writes made by the kernel"
    assert set(err.reasons) == {"mprotect"}
    with pytest.raises(ValueError, match="kernel_writes=True"):
        memwatch.alloc(PAGE, backend="mprotect", kernel_writes=True)
    # Nothing was protected: the kernel can still write into the buffer.
    readv_into(mem, 1)
    # Not needed, preferred, or a capability it has: fine.
    for asked in ({"kernel_writes": False}, {}, {"atomic": True, "partial_reset": True}):
        with memwatch.Watch(mem, backend="mprotect", **asked) as w:  # type: ignore[arg-type]
            mem[PAGE] = 2  # type: ignore[index]
            assert list(w.dirty()) == [PAGE]


def test_named_remote_backend_mismatch_is_a_capability_error() -> None:
    local = [n for n, b in BACKENDS.items() if b.available and not b.remote]
    if not local:
        pytest.skip("no local-only backend available here")
    with Child(1) as child, pytest.raises(memwatch.CapabilityError, match="pid= asks for"):
        memwatch.Watch(child.address, PAGE, pid=child.pid, backend=local[0])


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "mprotect"])
def test_named_backend_with_every_capability(mem: object, name: str) -> None:
    b = BACKENDS[name]
    if not b.available:
        pytest.skip(f"{name} is unavailable here: {b.reason}")
    asked = {"atomic": True, "kernel_writes": True, "partial_reset": True}
    if not b.atomic:  # softdirty
        with pytest.raises(memwatch.CapabilityError, match="atomic=True asks for"):
            memwatch.Watch(mem, backend=name, **asked)  # type: ignore[arg-type]
        asked["atomic"] = False
    with memwatch.Watch(mem, backend=name, **asked) as w:  # type: ignore[arg-type]
        readv_into(mem, 3)
        assert list(w.dirty(reset=True)) == [3 * PAGE]


# -- auto ---------------------------------------------------------------------------


def test_kernel_writes_required_are_seen(mem: object) -> None:
    try:
        w = memwatch.Watch(mem, kernel_writes=True)
    except memwatch.UnsupportedError as err:
        assert not any(b.available and b.sees_kernel_writes for b in BACKENDS.values()), err
        return
    with w:
        assert BACKENDS[w.backend].sees_kernel_writes
        readv_into(mem, 2)
        assert list(w.dirty(reset=True)) == [2 * PAGE]


def test_auto_prefers_kernel_writes_then_cost(mem: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """uffd and mprotect (the real ones) left: both atomic; uffd sees kernel
    writes, so a plain Watch takes it; with kernel_writes=False they tie on
    capabilities and cost decides: uffd again, cheaper on real hardware
    (the 6.18 host row; the TCG rows say otherwise, and are overruled);
    kernel_writes=True rules mprotect out."""
    only(monkeypatch, "uffd", "mprotect")
    with memwatch.Watch(mem) as w:
        assert w.backend == "uffd"
        readv_into(mem, 1)
        assert list(w.dirty(reset=True)) == [PAGE]
    r = rows()
    assert r["uffd"].chosen
    assert r["mprotect"].why.startswith(
        "could be chosen, but ranked lower: it cannot see writes made by the kernel"
    )
    assert "kernel_writes=False" in r["mprotect"].why

    with memwatch.Watch(mem, kernel_writes=False) as w:
        assert w.backend == "uffd"
        mem[2 * PAGE] = 1  # type: ignore[index]
        assert list(w.dirty(reset=True)) == [2 * PAGE]
    r = rows(kernel_writes=False)
    assert r["uffd"].chosen
    why = r["mprotect"].why
    assert why.startswith("could be chosen, but ranked lower: it costs more than uffd")
    # The measurement it rests on, as in README "Kernels": real hardware only.
    assert "(a 1 + 100 + 10000-page cycle: 268 vs 160 ms on the 6.18 host)" in why

    with memwatch.Watch(mem, kernel_writes=True, atomic=False) as w:
        assert w.backend == "uffd"
    r = rows(kernel_writes=True)
    assert r["uffd"].chosen and r["mprotect"].why.startswith("cannot see writes")


def test_auto_with_nothing_left_lists_every_reason(mem: object, monkeypatch: pytest.MonkeyPatch) -> None:
    only(monkeypatch, "mprotect")
    with pytest.raises(memwatch.UnsupportedError) as info:
        memwatch.Watch(mem, kernel_writes=True)
    err = info.value
    assert type(err) is memwatch.UnsupportedError  # not the caller's contradiction
    assert set(err.reasons) == set(BACKENDS)
    msg = str(err)
    assert msg.startswith("no memwatch backend can see writes made by the kernel here (")
    for name in ("syscall", "pagemap_scan", "uffd", "softdirty"):
        assert f"{name}: {name} ruled out by the test" in msg
    assert err.reasons["mprotect"].startswith("cannot see writes made by the kernel")
    assert not any(c.chosen for c in _backends.explain(kernel_writes=True))
    with memwatch.Watch(mem) as w:  # preferred, not required: mprotect it is
        assert w.backend == "mprotect"
    assert rows()["mprotect"].why.startswith("chosen: no usable backend has everything")


def test_alloc_passes_requirements(monkeypatch: pytest.MonkeyPatch) -> None:
    only(monkeypatch, "uffd", "mprotect")
    with memwatch.alloc(2 * PAGE, kernel_writes=False) as m:
        assert m.watch.backend == "uffd"
        m[PAGE] = 1
        assert memwatch.get_write_watch(m, reset=True) == ([m.address + PAGE], PAGE)
    only(monkeypatch, "mprotect")
    with memwatch.alloc(2 * PAGE) as m:
        assert m.watch.backend == "mprotect"
    with pytest.raises(memwatch.UnsupportedError, match="see writes made by the kernel"):
        memwatch.alloc(2 * PAGE, kernel_writes=True)


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize(
    "atomic,kernel_writes,partial_reset", list(itertools.product(TRI, TRI, TRI))
)
def test_explain_agrees_with_choose_for_every_requirement_set(
    remote: bool, atomic: bool | None, kernel_writes: bool | None, partial_reset: bool | None
) -> None:
    asked = {"atomic": atomic, "kernel_writes": kernel_writes, "partial_reset": partial_reset}
    got = _backends.explain(remote=remote, **asked)
    assert [c.backend.name for c in got] == list(BACKENDS)
    chosen = [c.backend for c in got if c.chosen]
    for c in got:
        assert c.why.startswith(PREFIXES), c
        assert c.why.startswith("chosen: ") == c.chosen
        if c.why.startswith("unavailable here: "):
            assert c.backend.reason in c.why
        b = c.backend
        if remote and not b.remote or any(
            v is True and not getattr(b, _backends._ATTR[k]) for k, v in asked.items()
        ):
            assert c.why.startswith("cannot "), c
    try:
        b = _backends.choose("auto", remote=remote, **asked)
    except memwatch.UnsupportedError:
        assert chosen == []
        return
    assert chosen == [b]
    # Nothing ranked lower would have been better by the rule.
    ranked = [c.backend for c in got if c.why.startswith("could be chosen")]
    for other in ranked:
        assert _backends._rank(b, asked) < _backends._rank(other, asked)


def test_cost_order_follows_the_measured_table() -> None:
    """_COST_ORDER is a total order agreeing with every pair the
    measurements decide, and the measurements are README's table."""
    order = _backends._COST_ORDER
    assert sorted(order) == sorted(BACKENDS)
    for a, b in itertools.combinations(order, 2):
        assert _backends._cheaper(a, b) is not False, (a, b)
    readme = (ROOT / "README.md").read_text()
    columns = {"stock 6.1 guest": 1, "patched 6.12 guest": 2, "6.18 host": 3}
    table: dict[str, dict[str, tuple[float, ...]]] = {k: {} for k in columns}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] in BACKENDS:
            for kernel, col in columns.items():
                if cells[col] != "—":
                    nums = re.sub(r"(\d) (\d)", r"\1\2", cells[col].removesuffix(" ms"))
                    table[kernel][cells[0]] = tuple(float(x) for x in nums.split(" / "))
    assert table == {k: dict(v) for k, v in _backends._CYCLE_MS.items()}


# -- without CAP_SYS_PTRACE: a condition of this machine, not of the mechanism ----


UNPRIV = textwrap.dedent(
    """
    import mmap, memwatch
    m = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
    with memwatch.Watch(m) as w:
        print("plain", w.backend)
    for backend in ("auto", "uffd"):
        try:
            memwatch.Watch(m, backend=backend, kernel_writes=True)
        except memwatch.UnsupportedError as e:
            print(backend, type(e).__name__, isinstance(e, ValueError), e)
    """
)


def test_user_mode_only_userfaultfd_and_kernel_writes() -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and util-linux setpriv to drop CAP_SYS_PTRACE")
    if Path("/proc/sys/vm/unprivileged_userfaultfd").read_text().strip() == "1":
        pytest.skip("vm.unprivileged_userfaultfd=1: no user-mode-only fallback")
    if not (BACKENDS["uffd"].available and BACKENDS["pagemap_scan"].available):
        pytest.skip("needs uffd and pagemap_scan (Linux 6.7+)")
    if BACKENDS["syscall"].available or BACKENDS["softdirty"].available:
        pytest.skip("a soft-dirty backend sees kernel writes here: nothing to refuse")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run(
        [setpriv, "--bounding-set", "-sys_ptrace", "--inh-caps", "-sys_ptrace",
         sys.executable, "-c", UNPRIV],
        capture_output=True, text=True, timeout=60, env=env, cwd="/", check=False,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0] == "plain pagemap_scan"  # kernel writes preferred, none can: still works
    assert lines[1].startswith("auto UnsupportedError False no memwatch backend can see")
    assert lines[2].startswith("uffd UnsupportedError False backend 'uffd' cannot see writes "
                               "made by the kernel here (its userfaultfd is user-mode-only")


# -- kernels where auto's choice differs (guest) --------------------------------------


def _kernel_has(*names: str, lacks: tuple[str, ...] = ()) -> pytest.MarkDecorator:
    ok = all(BACKENDS[n].available for n in names) and not any(
        BACKENDS[n].available for n in lacks
    )
    return pytest.mark.skipif(
        not ok,
        reason=f"needs a kernel with {', '.join(names)}"
        + (f" and without {', '.join(lacks)}" if lacks else "")
        + (" (the stock 6.1 guest: ci/test-stock.sh)" if lacks
           else " (the patched guest: ci/vm-run.sh)")
        + "; here: "
        + "; ".join(f"{n}: {b.reason or 'available'}" for n, b in BACKENDS.items()),
    )


@pytest.mark.guest
@_kernel_has("uffd", "softdirty", "mprotect", lacks=("syscall", "pagemap_scan"))
def test_auto_on_linux_6_1(mem: object) -> None:
    """Stock 6.1: a plain Watch gets uffd (atomic, sees kernel writes);
    atomic=False gets softdirty (cheaper at many pages); kernel_writes=False still
    uffd (cheaper than mprotect on real hardware); a named softdirty with
    atomic=True is a contradiction."""
    expect = [
        ({}, "uffd"),
        ({"atomic": True, "kernel_writes": True}, "uffd"),
        ({"atomic": False}, "softdirty"),
        ({"atomic": False, "kernel_writes": True}, "softdirty"),
        ({"kernel_writes": False}, "uffd"),
        ({"atomic": False, "kernel_writes": False}, "softdirty"),
    ]
    for asked, name in expect:
        with memwatch.Watch(mem, **asked) as w:  # type: ignore[arg-type]
            assert w.backend == name, asked
            mem[0] = 1  # type: ignore[index]
            if name != "mprotect":
                readv_into(mem, 2)
                assert list(w.dirty(reset=True)) == [0, 2 * PAGE], asked
            else:
                assert list(w.dirty(reset=True)) == [0], asked
    assert "costs more than softdirty" in rows(atomic=False)["uffd"].why
    assert rows()["softdirty"].why.startswith(
        "could be chosen, but ranked lower: it cannot get and reset atomically"
    )
    with pytest.raises(memwatch.CapabilityError, match="atomic=True"):
        memwatch.Watch(mem, backend="softdirty", atomic=True)
    with Child(1) as child:
        with pytest.raises(memwatch.UnsupportedError) as info:
            memwatch.Watch(child.address, PAGE, pid=child.pid, atomic=True)
        assert "watch another process and get and reset atomically" in str(info.value)
        with memwatch.Watch(child.address, PAGE, pid=child.pid) as w:
            assert w.backend == "softdirty"


@pytest.mark.guest
@_kernel_has("syscall", "pagemap_scan", "uffd", "softdirty", "mprotect")
def test_auto_on_the_patched_kernel(mem: object) -> None:
    """Every backend: the syscall has every capability and the lowest cost,
    so auto takes it whatever is asked, also for another process; softdirty
    is never taken by auto while the syscall works."""
    for atomic, kernel_writes in itertools.product(TRI, TRI):
        with memwatch.Watch(mem, atomic=atomic, kernel_writes=kernel_writes) as w:
            assert w.backend == "syscall", (atomic, kernel_writes)
    with Child(1) as child:
        for atomic in TRI:
            with memwatch.Watch(child.address, PAGE, pid=child.pid, atomic=atomic) as w:
                assert w.backend == "syscall"
    assert "costs more than syscall" in rows(atomic=False)["softdirty"].why
    with pytest.raises(memwatch.CapabilityError, match="atomic=True"):
        memwatch.Watch(mem, backend="softdirty", atomic=True)


# -- memwatch info ------------------------------------------------------------------


def test_info_explains_auto_for_what_is_asked(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """One line per backend: chosen / could be chosen, but ranked lower /
    cannot / unavailable; --kernel-writes no changes auto's pick the way
    Watch(buf, kernel_writes=False) does."""
    from memwatch import _cli

    only(monkeypatch, "uffd", "mprotect")
    for argv, asked, name in (
        ([], "", "uffd"),
        (["--kernel-writes", "no"], ", kernel_writes=False", "uffd"),
        (["--kernel-writes", "yes", "--atomic", "no"], ", atomic=False, kernel_writes=True",
         "uffd"),
    ):
        assert _cli.main(["info", *argv]) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        start = next(i for i, ln in enumerate(lines) if ln.startswith("backend "))
        table = lines[start + 1: start + 1 + len(BACKENDS)]
        assert [ln[1:].split()[0] for ln in table] == list(BACKENDS)
        for ln in table:
            assert re.search(r"(chosen: |could be chosen, but ranked lower: |cannot "
                             r"|unavailable here: )", ln), ln
        assert [ln[1:].split()[0] for ln in table if ln.startswith("*")] == [name]
        assert f"auto for this process (Watch(buf{asked})): {name} (" in out
        if argv == ["--kernel-writes", "no"]:
            assert "could be chosen, but ranked lower: it costs more than uffd" in out
        with anon(1) as m, memwatch.Watch(m, **_asked(argv)) as w:  # type: ignore[arg-type]
            assert w.backend == name
    assert _cli.main(["info", "--json", "--atomic", "no"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["auto"]["asked"] == {"atomic": False, "kernel_writes": None,
                                     "partial_reset": None}
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["info", "--atomic", "maybe"])
    assert exit_info.value.code == 2
    assert "expected yes or no, not 'maybe'" in capsys.readouterr().err


def _asked(argv: list[str]) -> dict[str, bool]:
    return {k.removeprefix("--").replace("-", "_"): v == "yes"
            for k, v in zip(argv[::2], argv[1::2])}


def test_testing_record_passes_requirements(mem: object) -> None:
    from memwatch import testing

    with testing.record(mem, kernel_writes=True) as rec:
        readv_into(mem, 1)
    assert BACKENDS[rec.backend].sees_kernel_writes
    assert rec.offsets == (PAGE,)
    if BACKENDS["mprotect"].available:
        with pytest.raises(memwatch.CapabilityError, match="kernel_writes=True"):
            testing.record(mem, backend="mprotect", kernel_writes=True).__enter__()
    with pytest.raises(TypeError, match="atomic must be"):
        testing.record(mem, atomic="no")  # type: ignore[arg-type]
