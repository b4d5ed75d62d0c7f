"""The C API (memwatch/include/memwatch/memwatch_capi.h, src/capi.cpp).

A tiny extension (tests/capi_test_ext.c) is compiled against the shipped
header at test time, with gcc and sysconfig's include path, into tmp_path,
and drives the table the way another extension would: the hot calls from C
threads without the GIL, next to Python Watches on the same pages.
"""

from __future__ import annotations

import ctypes
import errno
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from support import PAGE, anon, backend_params

import memwatch

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "capi_test_ext.c"
HEADER = Path(memwatch.get_include()) / "memwatch" / "memwatch_capi.h"
ANY = backend_params()
PARTIAL = backend_params(partial_reset=True)
ALL = (1 << 64) - 1  # MEMWATCH_ALL
P = ctypes.sizeof(ctypes.c_void_p)
# The version-1 table as released: these offsets must never change.
V1_LAYOUT = {
    "version": 0,
    "size": 4,
    "page_size": 8,
    "open": 16,
    "close": 16 + P,
    "dirty_into": 16 + 2 * P,
    "reset": 16 + 3 * P,
    "last_error": 16 + 4 * P,
    "info": 16 + 5 * P,
}

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the "
                                "test extension against memwatch_capi.h")


def _compile(tmp: Path, name: str, include: Path, *, lang: str = "c") -> subprocess.CompletedProcess[str]:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    cmd = [
        "gcc" if lang == "c" else "g++",
        "-shared", "-fPIC", "-O1", "-pthread",
        "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter",
        "-std=c11" if lang == "c" else "-std=c++17",
        "-x", lang,
        f"-DMODNAME=\"{name}\"", f"-DMODNAME_ID={name}",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{include}",
        str(SOURCE), "-o", str(tmp / f"{name}{suffix}"),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def _load(tmp: Path, name: str) -> ModuleType:
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    spec = importlib.util.spec_from_file_location(name, tmp / f"{name}{suffix}")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ext(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("capi")
    proc = _compile(tmp, "_mwcapi_v1", Path(memwatch.get_include()))
    assert proc.returncode == 0, proc.stderr
    mod = _load(tmp, "_mwcapi_v1")
    mod.import_api(1)
    return mod


def _buffer(npages: int) -> memoryview:
    # Its own private mapping (no heap neighbours) that nobody watches yet:
    # memwatch.alloc() would hold a Watch of its own.  Between guard pages
    # (support.anon): a bare mmap could merge with a neighbour, and softdirty
    # then reports the whole VMA (its documented false positive), which made
    # the exact softdirty cases fail now and then in the 6.1 guest.
    return anon(npages)


def _address(buf: Any) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


# -- the table and its versioning ---------------------------------------------


def test_header_is_shipped_where_get_include_says() -> None:
    assert HEADER.is_file()
    assert "memwatch_import_capi" in HEADER.read_text()


def test_table_version_size_and_page_size(ext: Any) -> None:
    version, size, page = ext.import_api(1)
    assert version >= 1
    assert size >= V1_LAYOUT["info"] + P
    assert page == PAGE == memwatch.PAGE_SIZE


def test_version_1_members_keep_their_offsets(ext: Any) -> None:
    layout = ext.layout()
    assert {k: layout[k] for k in V1_LAYOUT} == V1_LAYOUT
    assert layout["sizeof"] >= V1_LAYOUT["info"] + P


def test_capsule_is_named_for_pycapsule_import() -> None:
    from memwatch import _memwatch

    cap = _memwatch._C_API  # type: ignore[attr-defined]
    assert type(cap).__name__ == "PyCapsule"
    assert '"memwatch._memwatch._C_API"' in repr(cap)


def test_asking_for_a_version_the_header_does_not_know(ext: Any) -> None:
    with pytest.raises(ImportError, match=r"version 2 was requested, but this "
                       r"memwatch_capi.h knows versions 1 to 1"):
        ext.import_api(2)
    with pytest.raises(ImportError, match="knows versions 1 to 1"):
        ext.import_api(0)
    ext.import_api(1)


def _variant_header(tmp: Path, old: str, new: str, extra: dict[str, str] | None = None) -> Path:
    text = HEADER.read_text()
    assert old in text
    text = text.replace(old, new, 1)
    for a, b in (extra or {}).items():
        assert a in text
        text = text.replace(a, b, 1)
    inc = tmp / "include"
    (inc / "memwatch").mkdir(parents=True)
    (inc / "memwatch" / "memwatch_capi.h").write_text(text)
    return inc


def test_newer_header_keeps_old_entries_and_refuses_an_older_table(tmp_path: Path) -> None:
    """A version-2 header (one member appended) compiles -- its static
    asserts pin the version-1 offsets -- and an extension that asks for
    version 2 from the installed version-1 table gets a clear ImportError;
    asking for version 1 through the same header works."""
    inc = _variant_header(
        tmp_path,
        "\tint (*info)(const memwatch_watch *w, memwatch_info *info);\n",
        "\tint (*info)(const memwatch_watch *w, memwatch_info *info);\n"
        "\t/* ---- version 2 ---- */\n\tint (*future_call)(memwatch_watch *w);\n",
        {
            "#define MEMWATCH_CAPI_VERSION 1": "#define MEMWATCH_CAPI_VERSION 2",
            "return version == 1 ? MEMWATCH_CAPI_V1_SIZE : 0;":
                "return version == 1 ? MEMWATCH_CAPI_V1_SIZE : "
                "version == 2 ? MEMWATCH_CAPI_V1_SIZE + MEMWATCH__P : 0;",
        },
    )
    proc = _compile(tmp_path, "_mwcapi_v2", inc)
    assert proc.returncode == 0, proc.stderr
    v2 = _load(tmp_path, "_mwcapi_v2")
    layout = v2.layout()
    assert {k: layout[k] for k in V1_LAYOUT} == V1_LAYOUT
    assert layout["header_version"] == 2
    with pytest.raises(ImportError) as info:
        v2.import_api(2)
    assert str(info.value) == (
        "memwatch C API version 2 is required, but the installed memwatch provides "
        f"version 1 (table of {V1_LAYOUT['info'] + P} bytes); upgrade memwatch"
    )
    version, _, _ = v2.import_api(1)
    assert version == 1
    buf = _buffer(2)
    h = v2.open(_address(buf), 2 * PAGE)
    buf[PAGE] = 1
    assert v2.dirty(h, 4, True) == [PAGE]
    v2.close(h)


def test_a_member_inserted_before_version_1_ones_does_not_compile(tmp_path: Path) -> None:
    inc = _variant_header(
        tmp_path,
        "\tint (*close)(memwatch_watch *w);\n",
        "\tint (*inserted)(void);\n\tint (*close)(memwatch_watch *w);\n",
    )
    proc = _compile(tmp_path, "_mwcapi_bad", inc)
    assert proc.returncode != 0
    assert "memwatch_capi v1 ABI" in proc.stderr


def test_header_compiles_as_cxx(tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    src = tmp_path / "t.cpp"
    src.write_text("#include <Python.h>\n#include <memwatch/memwatch_capi.h>\n"
                   "const memwatch_capi *f() { return memwatch_import_capi(1); }\n")
    proc = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only",
         f"-I{sysconfig.get_paths()['include']}", f"-I{memwatch.get_include()}", str(src)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr


# -- driving it -------------------------------------------------------------


def _direct(backend: str) -> bool:
    """Whether a C watch alone on its pages is served with no Python (no GIL).

    softdirty is not: every softdirty Watch of a process goes through the
    registry, which harvests the process-wide state before clear_refs.
    """
    return backend != "softdirty"


@pytest.mark.parametrize("backend", ANY)
def test_writes_from_python_collected_by_a_c_thread(ext: Any, backend: str) -> None:
    buf = _buffer(16)
    h = ext.open(_address(buf), 16 * PAGE, backend)
    try:
        info = ext.info(h)
        assert info["backend"] == backend
        assert info["address"] == _address(buf) and info["length"] == 16 * PAGE
        assert ext.dirty_in_thread(h, 16, False) == []
        for page in (0, 3, 15):
            buf[page * PAGE + 7] = 1
        # No Python in the loop: this thread keeps the GIL while it waits
        # (softdirty always goes through the registry, with the GIL: its
        # reset is process-wide and every softdirty Watch shares it).
        direct = _direct(backend)
        assert ext.dirty_in_thread(h, 16, True, direct) == [0, 3 * PAGE, 15 * PAGE]
        assert ext.dirty_in_thread(h, 16, True, direct) == []
        buf[5 * PAGE] = 2
        assert ext.dirty(h, 16, False) == [5 * PAGE]
    finally:
        ext.close(h)


@pytest.mark.parametrize("backend", PARTIAL)
def test_short_buffer_offset_length_and_reset(ext: Any, backend: str) -> None:
    buf = _buffer(8)
    h = ext.open(_address(buf), 8 * PAGE, backend)
    try:
        for page in range(8):
            buf[page * PAGE] = 1
        assert ext.dirty(h, 3, True) == [0, PAGE, 2 * PAGE]  # stops when full
        assert ext.dirty(h, 8, False, 4 * PAGE, 2 * PAGE) == [4 * PAGE, 5 * PAGE]
        ext.reset(h, 4 * PAGE, PAGE)
        assert ext.dirty(h, 8, False) == [3 * PAGE, 5 * PAGE, 6 * PAGE, 7 * PAGE]
        ext.reset(h)
        assert ext.dirty(h, 8, False) == []
        assert ext.dirty(h, 0, True) == []  # capacity 0: nothing reported or reset
    finally:
        ext.close(h)


@pytest.mark.parametrize("backend", PARTIAL)
def test_polling_c_thread_sees_every_write(ext: Any, backend: str) -> None:
    npages = 64
    buf = _buffer(npages)
    h = ext.open(_address(buf), npages * PAGE, backend)
    try:
        ext.poll_start(h, npages)
        for rnd in range(5):
            for page in range(rnd, npages, 3):
                buf[page * PAGE + rnd] = rnd + 1
        pages, rounds, err, msg = ext.poll_stop()
        assert (err, msg) == (0, "")
        assert rounds > 0
        assert pages == list(range(npages))
    finally:
        ext.close(h)


@pytest.mark.parametrize("backend", PARTIAL)
@pytest.mark.parametrize("c_first", [True, False], ids=["c-first", "python-first"])
def test_c_watch_next_to_a_python_watch_both_see_every_write(
    ext: Any, backend: str, c_first: bool
) -> None:
    buf = _buffer(8)
    addr = _address(buf)
    if c_first:
        h = ext.open(addr, 8 * PAGE, backend)
        w = memwatch.Watch(addr + 2 * PAGE, 4 * PAGE, backend=backend)
    else:
        w = memwatch.Watch(addr + 2 * PAGE, 4 * PAGE, backend=backend)
        h = ext.open(addr, 8 * PAGE, backend)
    try:
        buf[0] = buf[3 * PAGE] = buf[5 * PAGE] = 1
        # The C side, from a C thread: shared pages take the GIL inside.
        assert ext.dirty_in_thread(h, 8, True) == [0, 3 * PAGE, 5 * PAGE]
        assert list(w.dirty(reset=True)) == [PAGE, 3 * PAGE]
        buf[3 * PAGE] = 2
        assert list(w.dirty(reset=True)) == [PAGE]
        assert ext.dirty(h, 8, True) == [3 * PAGE]
        w.close()
        # Alone again (c-first: its own registration) -> no Python needed.
        buf[7 * PAGE] = 3
        assert ext.dirty_in_thread(h, 8, True, c_first and _direct(backend)) == [7 * PAGE]
    finally:
        w.close()
        ext.close(h)


def test_two_c_watches_on_the_same_pages(ext: Any) -> None:
    buf = _buffer(4)
    a = ext.open(_address(buf), 4 * PAGE)
    b = ext.open(_address(buf), 2 * PAGE)
    try:
        buf[PAGE] = 1
        assert ext.dirty_in_thread(a, 4, True) == [PAGE]
        assert ext.dirty_in_thread(b, 4, True) == [PAGE]
        assert ext.dirty(a, 4, True) == ext.dirty(b, 4, True) == []
    finally:
        ext.close(b)
        ext.close(a)


# -- errors ------------------------------------------------------------------


def test_open_errors_say_what_was_wrong(ext: Any) -> None:
    buf = _buffer(1)
    with pytest.raises(OSError) as info:
        ext.open(_address(buf), PAGE, "nonsense")
    assert info.value.errno == errno.EINVAL
    assert "ValueError: unknown backend 'nonsense'" in str(info.value)
    with pytest.raises(OSError) as info:
        ext.open(_address(buf), PAGE, None, 1)
    assert info.value.errno == errno.EINVAL and "flags must be 0" in str(info.value)
    with pytest.raises(OSError) as info:
        ext.open(PAGE, PAGE)  # page 1 is never mapped
    assert info.value.errno == errno.ENOMEM
    assert "is not entirely mapped" in str(info.value)
    unavailable = [b.name for b in memwatch.backends() if not b.available]
    if unavailable:
        with pytest.raises(OSError) as info:
            ext.open(_address(buf), PAGE, unavailable[0])
        assert info.value.errno == errno.EOPNOTSUPP
        assert "UnsupportedError" in str(info.value)


def test_hot_call_errors(ext: Any) -> None:
    buf = _buffer(2)
    h = ext.open(_address(buf), 2 * PAGE)
    try:
        with pytest.raises(OSError, match="offset 0x1 is not a multiple of the page size"):
            ext.dirty(h, 4, False, 1)
        with pytest.raises(OSError, match="outside the watched range"):
            ext.dirty(h, 4, False, PAGE, 2 * PAGE)
        with pytest.raises(OSError, match="outside the watched range"):
            ext.reset(h, 3 * PAGE, PAGE)
    finally:
        ext.close(h)


def test_the_error_is_per_thread(ext: Any) -> None:
    buf = _buffer(1)
    with pytest.raises(OSError, match="flags must be 0"):
        ext.open(_address(buf), PAGE, None, 1)
    seen: list[BaseException] = []

    def other() -> None:
        try:
            ext.open(_address(buf), PAGE, "nonsense")
        except OSError as err:
            seen.append(err)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert "unknown backend" in str(seen[0])
    with pytest.raises(OSError, match="flags must be 0"):
        ext.open(_address(buf), PAGE, None, 2)


def test_forked_child_refuses_inherited_c_watch(ext: Any) -> None:
    code = f"""
import ctypes, mmap, os, sys, importlib.util
sys.path[:0] = {sys.path!r}
spec = importlib.util.spec_from_file_location("_mwcapi_v1", {ext.__file__!r})
ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
ext.import_api(1)
buf = mmap.mmap(-1, 2 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
h = ext.open(ctypes.addressof(ctypes.c_char.from_buffer(buf)), len(buf))
pid = os.fork()
if pid == 0:
    try:
        ext.dirty_in_thread(h, 4, True)
        os._exit(1)
    except OSError as err:
        os._exit(0 if err.errno in (22,) else 2)
_, status = os.waitpid(pid, 0)
buf[0] = 1
assert ext.dirty(h, 4, True) == [0], "parent lost its write"
ext.close(h)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _readme_blocks(heading: str, lang: str) -> list[str]:
    text = (HERE.parent / "README.md").read_text()
    # A "### " section of "## Who it is for", up to the next heading.
    section = re.split(r"\n##+ ", text.split(f"\n### {heading}\n", 1)[1], maxsplit=1)[0]
    return [b.split("```", 1)[0] for b in section.split(f"```{lang}\n")[1:]]


def test_readme_example_builds_and_runs(tmp_path: Path) -> None:
    """The README's framewatch.c, built by its own shell lines, run by its
    own Python lines; the output is what their comments say."""
    if not (HERE.parent / "README.md").exists():
        pytest.skip("README.md is not next to the tests (installed package)")
    if shutil.which("cc") is None:
        pytest.skip("needs cc")
    heading = "C and C++ extensions"
    (c_code,) = _readme_blocks(heading, "c")
    (sh_code,) = _readme_blocks(heading, "sh")
    (py_code,) = _readme_blocks(heading, "python")
    (tmp_path / "framewatch.c").write_text(c_code)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(memwatch.__file__).resolve().parents[1]), str(tmp_path)]))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    build = subprocess.run(["bash", "-euc", sh_code], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120, check=False)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([sys.executable, "-c", py_code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert (run.returncode, run.stderr) == (0, "")
    expected = [line.split("# ", 1)[1].strip() for line in py_code.splitlines()
                if line.startswith("print(")]
    if PAGE != 4096:
        expected[0] = str([5 * PAGE])
    assert run.stdout.splitlines() == expected


@pytest.mark.parametrize("shared", [False, True], ids=["alone", "shared"])
def test_exit_with_c_watches_open_and_a_c_thread_polling(ext: Any, shared: bool) -> None:
    """The interpreter exits cleanly while a C thread still polls (the
    shared case asks for the GIL during finalization: refused, not a hang)
    and a watch is closed by a capsule destructor at exit."""
    code = f"""
import ctypes, mmap, sys, importlib.util
sys.path[:0] = {sys.path!r}
import memwatch
spec = importlib.util.spec_from_file_location("_mwcapi_v1", {ext.__file__!r})
ext = importlib.util.module_from_spec(spec); spec.loader.exec_module(ext)
ext.import_api(1)
buf = mmap.mmap(-1, 8 * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
h = ext.open(addr, len(buf))
if {shared!r}:
    w = memwatch.Watch(addr, len(buf))
ext.poll_start(h, 8)
for i in range(2000):
    buf[(i % 8) * mmap.PAGESIZE] = 1
print("exiting")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "exiting\n", "")
