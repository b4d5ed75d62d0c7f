"""The pytest plugin (pytest_memwatch.py, memwatch/testing.py), run through
pytester on small test files, as a suite that uses it would."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from support import BACKENDS

pytest_plugins = ("pytester",)

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ("-p", "pytest_memwatch")
LOCAL = [n for n, b in BACKENDS.items() if b.available and b.partial_reset]

pytestmark = pytest.mark.skipif(not LOCAL, reason="no backend can watch this process here: "
                                "the plugin's skip path is tested by test_skips_with_the_reason")


def test_entry_point_is_the_module_name() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["entry-points"]["pytest11"] == {"pytest_memwatch": "pytest_memwatch"}
    assert "pytest_memwatch" in meta["tool"]["setuptools"]["py-modules"]
    assert (ROOT / "pytest_memwatch.py").is_file()


def test_fixture_reports_the_pages_written(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import mmap
        import numpy
        import memwatch

        P = memwatch.PAGE_SIZE

        def test_alloc(page_writes):
            buf = memwatch.alloc(16 * P)
            with page_writes(buf) as rec:
                buf[3 * P] = 1
                buf[9 * P + 5] = 1
            assert rec.pages == (3, 9)
            assert rec.offsets == (3 * P, 9 * P)
            assert len(rec) == 2

        def test_numpy_and_mmap(page_writes):
            arr = numpy.zeros(64 * P // 8)        # its own mapping, 16 bytes in
            with page_writes(arr) as rec:
                arr[P // 8 * 10] = 1.0
            assert (arr.ctypes.data + 10 * P - rec.address) // P in rec.pages
            m = mmap.mmap(-1, 8 * P, flags=mmap.MAP_PRIVATE)
            with page_writes(m) as rec:
                m[7 * P] = 1
            assert rec.pages == (7,)

        def test_address_range(page_writes):
            import ctypes
            m = mmap.mmap(-1, 4 * P, flags=mmap.MAP_PRIVATE)
            addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
            with page_writes(addr, 4 * P) as rec:
                m[P] = 1
            assert rec.pages == (1,)

        def test_passing_assertions(page_writes):
            buf = memwatch.alloc(8 * P)
            with page_writes.at_most(buf, 2):
                buf[0] = buf[P] = 1
            with page_writes.only(buf, [range(0, P), (5 * P, 5 * P + 1), 7 * P]):
                buf[10] = buf[5 * P] = buf[7 * P] = 1
            with page_writes.only(buf, slice(2 * P, 3 * P)):
                pass
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_failing_at_most_lists_every_page(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import memwatch

        P = memwatch.PAGE_SIZE

        def test_too_many(page_writes):
            buf = memwatch.alloc(8 * P)
            with page_writes.at_most(buf, 2):
                for page in (1, 4, 6):
                    buf[page * P] = 1
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        ("E*PageWriteError: 3 pages of *WatchedMapping of 32768 bytes were written, "
        "at most 2 expected:"),
        "E*  page 1: target bytes 0x1000..0x2000 (offset 0x1000, address 0x*)",
        "E*  page 4: target bytes 0x4000..0x5000 (offset 0x4000, address 0x*)",
        "E*  page 6: target bytes 0x6000..0x7000 (offset 0x6000, address 0x*)",
        "E*(backend *, page size 4096; watched 0x*+0x8000, the target starts 0x0 into it)",
    ])


def test_failing_only_lists_the_unexpected_pages(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import memwatch

        P = memwatch.PAGE_SIZE

        def test_stray_write(page_writes):
            buf = memwatch.alloc(8 * P)
            with page_writes(buf) as rec:
                buf[0] = buf[2 * P + 9] = buf[5 * P] = 1
            assert rec.pages == (0, 2, 5)
            rec.assert_only([range(0, 100), (2 * P, 2 * P + 10), 5 * P + 4095])  # passes
            rec.assert_only(range(0, 100))
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        ("E*PageWriteError: 2 of the 3 written pages of *WatchedMapping of 32768 bytes "
        "are outside the allowed offsets ?0x0..0x64?:"),  # ? for the brackets (fnmatch)
        "E*  page 2: target bytes 0x2000..0x3000 (offset 0x2000, address 0x*)",
        "E*  page 5: target bytes 0x5000..0x6000 (offset 0x5000, address 0x*)",
    ])
    assert "page 0:" not in result.stdout.str()


def test_unaligned_target_offsets_are_target_bytes(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import memwatch

        P = memwatch.PAGE_SIZE

        def test_view(page_writes):
            m = memwatch.alloc(4 * P)
            view = memoryview(m)[100:]           # starts 100 bytes into page 0
            with page_writes.only(view, range(0, 10)):
                view[2 * P] = 1                  # page 2 of the range
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "E*  page 2: target bytes 0x1f9c..0x2f9c (offset 0x2000, address 0x*)",
        "E*the target starts 0x64 into it)",
    ])


def test_block_that_raises_is_not_asserted(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import memwatch

        def test_raises(page_writes):
            buf = memwatch.alloc(4 * memwatch.PAGE_SIZE)
            with page_writes.at_most(buf, 0):
                buf[0] = 1
                raise KeyError("the test's own error")
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["E*KeyError: \"the test's own error\""])
    assert "PageWriteError" not in result.stdout.str()


def test_skips_with_the_reason_when_no_mechanism_can_watch(pytester: pytest.Pytester) -> None:
    missing = [n for n, b in BACKENDS.items() if not b.available]
    if not missing:
        pytest.skip("every backend is available here: no real unavailable one to ask for")
    pytester.makepyfile(
        """
        def test_uses_it(page_writes):
            raise AssertionError("must not run")

        def test_does_not(request):
            pass
        """
    )
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider", "-rs",
                                f"--memwatch-backend={missing[0]}")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*memwatch: backend '{missing[0]}' is unavailable here: *"])


def test_loading_the_plugin_imports_nothing_of_memwatch(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import sys

        def test_lazy(request):
            assert request.config.pluginmanager.hasplugin("pytest_memwatch")
            assert [m for m in sys.modules if m.split(".")[0] == "memwatch"] == []
        """
    )
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(page_writes):\n    pass\n")
    result = pytester.runpytest("-p", "no:memwatch", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'page_writes' not found*"])


# -- pytest-benchmark ----------------------------------------------------------

BENCH = """
import memwatch
import pytest

P = memwatch.PAGE_SIZE

def write_pages(buf, pages):
    for page in pages:
        buf[page * P] = buf[page * P] + 1 & 0xff

def test_plain(benchmark):
    buf = memwatch.alloc(32 * P)
    benchmark(write_pages, buf, (1, 2, 30))

def test_pedantic_with_setup(benchmark):
    def setup():
        return (memwatch.alloc(8 * P), (0, 7)), {}
    benchmark.pedantic(write_pages, setup=setup, rounds=3)

def test_closure_named_by_the_fixture(benchmark, page_writes):
    buf = memwatch.alloc(16 * P)
    page_writes.track_benchmark(buf)
    benchmark(lambda: write_pages(buf, range(4)))

def test_nothing_to_watch(benchmark):
    benchmark(sum, (1, 2, 3))
"""


def _bench_json(pytester: pytest.Pytester, *extra: str) -> tuple[pytest.RunResult, dict[str, dict[str, object]]]:
    pytester.makepyfile(BENCH)
    out = pytester.path / "bench.json"
    result = pytester.runpytest(
        *PLUGIN, "-p", "no:cacheprovider", "--benchmark-json", str(out),
        "--benchmark-min-rounds=2", "--benchmark-max-time=0.001",
        "--benchmark-warmup=off", *extra,
    )
    data = json.loads(out.read_text())
    return result, {b["name"]: b["extra_info"] for b in data["benchmarks"]}


def test_benchmark_extra_info_in_the_saved_json(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    result, info = _bench_json(pytester, "--memwatch-benchmark", "--memwatch-rounds=4")
    result.assert_outcomes(passed=4)
    plain = info["test_plain"]["memwatch"]
    assert isinstance(plain, dict)
    assert plain["rounds"] == 4
    assert plain["pages_per_round"] == [3, 3, 3, 3]
    assert plain["median_pages_per_round"] == 3
    assert plain["backend"] in LOCAL
    assert plain["targets"] == [{
        "target": "arg 0: memwatch.WatchedMapping of 131072 bytes",
        "pages": 32,
        "pages_per_round": [3, 3, 3, 3],
    }]
    assert info["test_plain"]["memwatch_pages_per_round"] == 3
    assert info["test_pedantic_with_setup"]["memwatch"]["pages_per_round"] == [2] * 4  # type: ignore[index]
    assert info["test_closure_named_by_the_fixture"]["memwatch_pages_per_round"] == 4
    nothing = info["test_nothing_to_watch"]["memwatch"]
    assert isinstance(nothing, dict) and "no writable buffer" in str(nothing["error"])
    result.stdout.fnmatch_lines(["*PytestWarning: --memwatch-benchmark, *test_nothing_to_watch*"])


def test_benchmark_untouched_without_the_option(pytester: pytest.Pytester) -> None:
    pytest.importorskip("pytest_benchmark")
    result, info = _bench_json(pytester)
    result.assert_outcomes(passed=4)
    assert all(i == {} for i in info.values())


def test_benchmark_option_needs_pytest_benchmark(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*PLUGIN, "-p", "no:benchmark", "--memwatch-benchmark")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--memwatch-benchmark needs pytest-benchmark*"])


def _readme_block(heading: str, lang: str) -> str:
    text = (ROOT / "README.md").read_text()
    # A "### " section of "## Who it is for", up to the next heading.
    section = re.split(r"\n##+ ", text.split(f"\n### {heading}\n", 1)[1], maxsplit=1)[0]
    return section.split(f"```{lang}\n", 1)[1].split("```", 1)[0]


def test_readme_example_passes(pytester: pytest.Pytester) -> None:
    if not (ROOT / "README.md").exists():
        pytest.skip("README.md is not next to the tests (installed package)")
    code = _readme_block("Test suites (pytest, pytest-benchmark)", "python")
    assert "def test_update_writes_one_page(page_writes):" in code
    pytester.makepyfile(test_pages=code)
    result = pytester.runpytest(*PLUGIN, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_autoloaded_through_the_entry_point_when_installed(pytester: pytest.Pytester) -> None:
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="pytest11") if ep.name == "pytest_memwatch"]
    if not eps:
        pytest.skip("memwatch's dist-info (pip install) is not on this path: nothing autoloads")
    assert eps[0].value == "pytest_memwatch"
    pytester.makepyfile("def test_x(page_writes):\n    assert page_writes.backend == 'auto'\n")
    result = pytester.runpytest("-p", "no:cacheprovider")  # no -p pytest_memwatch
    result.assert_outcomes(passed=1)


def test_benchmark_watches_only_writable_contiguous_buffers() -> None:
    import mmap

    from memwatch.testing import writable_buffers

    np = pytest.importorskip("numpy")
    m = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE)
    closed = mmap.mmap(-1, 4096)
    closed.close()
    args = (m, closed, b"x", bytearray(3), np.zeros(4)[::2], memoryview(b"ab"), 7, bytearray())
    found = writable_buffers(args, {"k": bytearray(1)})
    assert [name for name, _ in found] == ["arg 0", "arg 3", "k="]


def test_skips_when_memwatch_cannot_be_imported(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken install (here: a memwatch package whose import fails, first
    on the path) skips the tests that use the fixture and leaves the rest."""
    shadow = pytester.mkdir("shadow")
    (shadow / "memwatch").mkdir()
    (shadow / "memwatch" / "__init__.py").write_text(
        "raise ImportError('simulated: the extension is missing')\n")
    pytester.makepyfile(
        """
        def test_uses_it(page_writes):
            raise AssertionError("must not run")

        def test_other():
            pass
        """
    )
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(shadow), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        ["SKIPPED*memwatch: cannot import memwatch here (simulated: the extension is missing)*"])
