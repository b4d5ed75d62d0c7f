"""pytest plugin: which memory pages does this code write? (memwatch)

Registered through the ``pytest11`` entry point ``pytest_memwatch`` (the
module's own name, so ``-p pytest_memwatch`` is a no-op when it is already
loaded, and ``-p no:memwatch`` or ``-p no:pytest_memwatch`` turns it off).

* The ``page_writes`` fixture watches a writable buffer (bytearray, numpy
  array, mmap, :func:`memwatch.alloc`) or an address range during a block::

      def test_update(page_writes):
          buf = memwatch.alloc(64 * 4096)
          with page_writes(buf) as rec:
              update(buf)
          assert rec.pages == (3,)
          with page_writes.at_most(buf, 2):        # fails listing the pages
              update(buf)
          with page_writes.only(buf, [range(0, 4096)]):
              update(buf)

* ``--memwatch-benchmark`` (with pytest-benchmark): after each benchmark's
  timed rounds, ``--memwatch-rounds`` more calls (untimed, so the timing is
  untouched) are made with the writable buffers among the call's arguments
  (or those named by ``page_writes.track_benchmark(buf)``) watched, and the
  pages written per call go into the benchmark's ``extra_info["memwatch"]``
  (and ``extra_info["memwatch_pages_per_round"]``, the median), so a saved
  benchmark JSON tracks write amplification next to time.

Nothing from memwatch is imported until a test asks for ``page_writes`` or
``--memwatch-benchmark`` is given: importing memwatch loads its extension.
Where memwatch cannot be imported, or no mechanism can watch here, a test
that uses the fixture is skipped with the reason.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from memwatch.testing import Allowed, Recording

__all__ = ["PageWrites"]

_BACKENDS = ("auto", "syscall", "pagemap_scan", "softdirty", "uffd", "mprotect")
_TARGETS = pytest.StashKey[list[tuple[str, object]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("memwatch", "memwatch: which memory pages a test writes")
    group.addoption(
        "--memwatch-backend",
        default="auto",
        choices=_BACKENDS,
        help="mechanism for the page_writes fixture and --memwatch-benchmark "
        "(default: auto, the best available)",
    )
    group.addoption(
        "--memwatch-benchmark",
        action="store_true",
        default=False,
        help="with pytest-benchmark: record the pages each benchmarked call writes "
        "into its buffer arguments in extra_info['memwatch'] (measured in "
        "--memwatch-rounds extra, untimed calls after the timed rounds)",
    )
    group.addoption(
        "--memwatch-rounds",
        type=int,
        default=5,
        metavar="N",
        help="untimed calls per benchmark for --memwatch-benchmark (default: 5)",
    )


def pytest_configure(config: pytest.Config) -> None:
    if not config.getoption("memwatch_benchmark", False):
        return
    rounds = config.getoption("memwatch_rounds")
    if rounds < 1:
        raise pytest.UsageError(f"--memwatch-rounds must be at least 1, got {rounds}")
    if not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError(
            "--memwatch-benchmark needs pytest-benchmark (pip install pytest-benchmark)"
        )
    config.pluginmanager.register(
        _BenchmarkPages(rounds, config.getoption("memwatch_backend")), "memwatch-benchmark"
    )


def _skip(reason: str) -> NoReturn:
    pytest.skip(f"memwatch: {reason}")


def _testing_or_skip() -> ModuleType:
    try:
        from memwatch import testing
    except ImportError as err:
        _skip(f"cannot import memwatch here ({err})")
    return testing


def _skip_unless_available(backend: str) -> None:
    from memwatch import UnsupportedError, _backends

    try:
        _backends.choose(backend)
    except UnsupportedError as err:
        _skip(str(err))


class PageWrites:
    """The ``page_writes`` fixture: records and assertions on page writes.

    Every method takes a *target*: a writable C-contiguous buffer, or an int
    address with *length*.  Offsets in assertions are bytes from the
    target's start; pages are whole (see :mod:`memwatch.testing`).
    """

    def __init__(self, testing: ModuleType, backend: str, node: pytest.Item) -> None:
        self._testing = testing
        self._backend = backend
        self._node = node

    @property
    def backend(self) -> str:
        """The backend asked for (``--memwatch-backend``; ``"auto"`` by default)."""
        return self._backend

    def _recording(
        self,
        target: object,
        length: int | None,
        on_exit: Callable[[Recording], None] | None,
    ) -> Recording:
        rec: Recording = self._testing.Recording(
            target, length, backend=self._backend, on_exit=on_exit, unsupported=_skip
        )
        return rec

    def __call__(self, target: object, length: int | None = None) -> Recording:
        """``with page_writes(buf) as rec:`` -- then ``rec.pages``,
        ``rec.offsets``, ``rec.assert_at_most(n)``, ``rec.assert_only(...)``."""
        return self._recording(target, length, None)

    def at_most(self, target: object, pages: int, *, length: int | None = None) -> Recording:
        """A block that must write at most *pages* pages of *target*."""

        def check(rec: Recording) -> None:
            __tracebackhide__ = True
            rec.assert_at_most(pages)

        return self._recording(target, length, check)

    def only(self, target: object, allowed: Allowed, *, length: int | None = None) -> Recording:
        """A block that must write no page of *target* outside *allowed*
        (byte offsets: ints, ranges, slices, (start, stop) pairs)."""
        self._testing._spans(allowed)  # a bad spec fails before the block runs

        def check(rec: Recording) -> None:
            __tracebackhide__ = True
            rec.assert_only(allowed)

        return self._recording(target, length, check)

    def track_benchmark(self, *targets: object) -> None:
        """Buffers ``--memwatch-benchmark`` watches in this test's benchmark
        (instead of the writable buffers among the call's arguments)."""
        found = self._node.stash.setdefault(_TARGETS, [])
        for t in targets:
            found.append((f"target {len(found)}", t))


@pytest.fixture
def page_writes(request: pytest.FixtureRequest) -> PageWrites:
    """Watch a buffer or address range during a block; assert on the pages
    it wrote (``page_writes(buf)``, ``.at_most(buf, n)``, ``.only(buf, offsets)``)."""
    testing = _testing_or_skip()
    backend = request.config.getoption("memwatch_backend")
    _skip_unless_available(backend)
    return PageWrites(testing, backend, request.node)


# -- pytest-benchmark --------------------------------------------------------

_Call = Callable[[], "tuple[Sequence[object], Mapping[str, object], Callable[[], object]]"]


class _BenchmarkPages:
    """Registered by --memwatch-benchmark: wraps each ``benchmark`` fixture."""

    def __init__(self, rounds: int, backend: str) -> None:
        self.rounds = rounds
        self.backend = backend

    @pytest.fixture(autouse=True)
    def _memwatch_benchmark_pages(self, request: pytest.FixtureRequest) -> Iterator[None]:
        if "benchmark" in request.fixturenames:
            bench = request.getfixturevalue("benchmark")
            bench.__class__ = _measuring(type(bench))
            bench._memwatch_record = functools.partial(self.record, bench, request.node)
        yield

    def record(self, bench: Any, node: pytest.Item, call: _Call) -> None:
        try:
            from memwatch import testing

            info = testing.measure_calls(
                call, node.stash.get(_TARGETS, None), rounds=self.rounds, backend=self.backend
            )
        except (ImportError, OSError) as err:  # UnsupportedError is an OSError
            info = {"error": f"{type(err).__name__}: {err}"}
        bench.extra_info["memwatch"] = info
        if "median_pages_per_round" in info:
            bench.extra_info["memwatch_pages_per_round"] = info["median_pages_per_round"]
        else:
            warnings.warn(
                pytest.PytestWarning(f"--memwatch-benchmark, {node.nodeid}: {info['error']}"),
                stacklevel=1,
            )


_measuring_classes: dict[type, type] = {}


def _measuring(cls: type) -> type:
    """A subclass of pytest-benchmark's fixture class that measures pages
    after the timed rounds of ``benchmark(...)`` and ``benchmark.pedantic(...)``."""
    if cls in _measuring_classes:
        return _measuring_classes[cls]

    class MemwatchBenchmarkFixture(cls):  # type: ignore[misc]
        def __call__(self, function_to_benchmark: Callable[..., Any], *args: Any,
                     **kwargs: Any) -> Any:
            result = super().__call__(function_to_benchmark, *args, **kwargs)

            def call() -> tuple[Sequence[object], Mapping[str, object], Callable[[], object]]:
                return args, kwargs, lambda: function_to_benchmark(*args, **kwargs)

            self._memwatch_record(call)
            return result

        def pedantic(self, target: Callable[..., Any], args: Sequence[Any] = (),
                     kwargs: Mapping[str, Any] | None = None,
                     setup: Callable[[], Any] | None = None,
                     teardown: Callable[..., Any] | None = None, **rest: Any) -> Any:
            result = super().pedantic(target, args=args, kwargs=kwargs, setup=setup,
                                      teardown=teardown, **rest)

            def call() -> tuple[Sequence[object], Mapping[str, object], Callable[[], object]]:
                a: Sequence[Any] = args
                k: Mapping[str, Any] = kwargs or {}
                if setup is not None:
                    made = setup()
                    if made:
                        a, k = made

                def run() -> None:
                    target(*a, **k)
                    if teardown is not None:
                        teardown(*a, **k)

                return a, k, run

            self._memwatch_record(call)
            return result

    MemwatchBenchmarkFixture.__qualname__ = cls.__qualname__
    _measuring_classes[cls] = MemwatchBenchmarkFixture
    return MemwatchBenchmarkFixture
