"""The uapi values the extension compiles in (src/uapi.hpp) against the
kernel tree's headers.

src/uapi.hpp defines the PAGEMAP_SCAN and userfaultfd structs and constants
itself (Debian 12's installed headers predate Linux 6.7).  This test compiles
a small program against that very header, prints what it sees, and compares
every value with include/uapi/linux/{fs,userfaultfd}.h of a kernel tree --
so nothing test-only has to ship inside the production extension.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _kernel_tree() -> Path | None:
    candidates = [
        os.environ.get("MEMWATCH_KERNEL_TREE", ""),
        "/root/kdev/linux-source-6.12",
        str(Path.home() / ".cache/memwatch/pristine/linux-source-6.12"),
    ]
    for c in candidates:
        if c and (Path(c) / "include/uapi/linux/fs.h").exists():
            return Path(c)
    return None


KTREE = _kernel_tree()
CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")

_NAMES = ["PAGEMAP_SCAN", "PAGE_IS_WPALLOWED", "PAGE_IS_WRITTEN", "PAGE_IS_FILE", "PAGE_IS_PRESENT", "PAGE_IS_SWAPPED", "PAGE_IS_PFNZERO", "PAGE_IS_HUGE", "PAGE_IS_SOFT_DIRTY", "PM_SCAN_WP_MATCHING", "PM_SCAN_CHECK_WPASYNC", "UFFD_API", "UFFD_USER_MODE_ONLY", "UFFD_FEATURE_PAGEFAULT_FLAG_WP", "UFFD_FEATURE_WP_HUGETLBFS_SHMEM", "UFFD_FEATURE_WP_UNPOPULATED", "UFFD_FEATURE_WP_ASYNC", "UFFD_EVENT_PAGEFAULT", "UFFD_PAGEFAULT_FLAG_WRITE", "UFFD_PAGEFAULT_FLAG_WP", "UFFDIO_REGISTER_MODE_MISSING", "UFFDIO_REGISTER_MODE_WP", "UFFDIO_WRITEPROTECT_MODE_WP", "UFFDIO_WRITEPROTECT_MODE_DONTWAKE", "UFFDIO_REGISTER", "UFFDIO_UNREGISTER", "UFFDIO_WAKE", "UFFDIO_WRITEPROTECT"]
_STRUCTS = ("page_region", "pm_scan_arg", "uffdio_api", "uffdio_range",
            "uffdio_register", "uffdio_writeprotect", "uffd_msg")


class _Compiled:
    """The values of src/uapi.hpp, as a compiled program prints them."""

    def __init__(self, values: dict[str, int]) -> None:
        self.values = values
        self.SIZEOF = {s: values["sizeof_" + s] for s in _STRUCTS}

    def __getattr__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __dir__(self) -> list[str]:
        return list(self.values)


def _compiled_uapi(tmp: Path) -> _Compiled:
    lines = [f'    out("{n}", memwatch::uapi::{n});' for n in _NAMES]
    lines.append('    out("UFFDIO_API", memwatch::uapi::UFFDIO_API_IOCTL);')
    lines += [f'    out("sizeof_{s}", sizeof(memwatch::uapi::{s}));' for s in _STRUCTS]
    prog = (
        '#include <cstdio>\n#include "uapi.hpp"\n'
        "template <class T> void out(const char *n, T v) {\n"
        '    std::printf("%s %llu\\n", n, static_cast<unsigned long long>(v));\n}\n'
        "int main() {\n" + "\n".join(lines) + "\n}\n"
    )
    (tmp / "uapi_values.cpp").write_text(prog)
    exe = tmp / "uapi_values"
    subprocess.run([str(CXX), "-std=c++17", "-I", str(ROOT / "src"), "-o", str(exe),
                    str(tmp / "uapi_values.cpp")], check=True, capture_output=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    return _Compiled({k: int(v) for k, v in (ln.split() for ln in out.splitlines())})


def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _parse_defines(text: str) -> dict[str, str]:
    text = re.sub(r"\\\n", " ", text)
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^#define\s+(\w+)\s+(.+?)\s*(?:/\*.*)?$", text, re.MULTILINE)}


def _int_expr(expr: str) -> int:
    expr = re.sub(r"\(__u64\)", "", expr)
    assert re.fullmatch(r"[\s\d()<x|a-fA-F]+", expr), expr
    return int(eval(expr))


def _struct_size(text: str, name: str) -> int:
    body = re.search(rf"struct {name} \{{(.*?)\n\}};", text, re.DOTALL)
    assert body, name
    sizes = {"__u64": 8, "__s64": 8, "__u32": 4, "__u16": 2, "__u8": 1}
    total = 0
    for m in re.finditer(r"^\s*(?:struct (\w+)|(__[us]\d+))\s+\w+;", body.group(1), re.MULTILINE):
        total += _struct_size(text, m.group(1)) if m.group(1) else sizes[m.group(2)]
    return total


@pytest.mark.skipif(KTREE is None, reason="no Linux 6.12 source tree found (set "
                    "MEMWATCH_KERNEL_TREE; ci/build-kernel.sh unpacks one under "
                    "~/.cache/memwatch/pristine)")
@pytest.mark.skipif(CXX is None, reason="no C++ compiler to build src/uapi.hpp with")
def test_uapi_values_match_kernel_headers(tmp_path: Path) -> None:
    assert KTREE is not None
    u = _compiled_uapi(tmp_path)
    fs = (KTREE / "include/uapi/linux/fs.h").read_text()
    uf = (KTREE / "include/uapi/linux/userfaultfd.h").read_text()
    dfs, duf = _parse_defines(fs), _parse_defines(uf)
    # Struct sizes (counting the fields the header declares).
    assert _struct_size(fs, "page_region") == u.SIZEOF["page_region"] == 24
    assert _struct_size(fs, "pm_scan_arg") == u.SIZEOF["pm_scan_arg"] == 96
    for s in ("uffdio_api", "uffdio_range", "uffdio_register", "uffdio_writeprotect"):
        assert _struct_size(uf, s) == u.SIZEOF[s], s
    assert u.SIZEOF["uffd_msg"] == 32  # __packed union of 3 x __u64 + 8-byte header
    # Bit values.
    names_fs = [k for k in dfs if k.startswith(("PAGE_IS_", "PM_SCAN_"))]
    assert {"PAGE_IS_WRITTEN", "PM_SCAN_WP_MATCHING", "PM_SCAN_CHECK_WPASYNC"} <= set(names_fs)
    for k in names_fs:
        if hasattr(u, k):
            assert getattr(u, k) == _int_expr(dfs[k]), k
    for k in [k for k in dir(u) if k.startswith(("UFFD_", "UFFDIO_")) and k in duf]:
        val = duf[k]
        m = re.fullmatch(r"_IO(WR|R|W)?\(UFFDIO,\s*(_UFFDIO_\w+),\s*struct (\w+)\)", val)
        if m:
            direction = {"WR": 3, "R": 2, "W": 1, None: 0}[m.group(1)]
            nr = _int_expr(duf[m.group(2)])
            expect = _ioc(direction, 0xAA, nr, _struct_size(uf, m.group(3)))
        else:
            expect = _int_expr(val)
        assert getattr(u, k) == expect, k
    m = re.fullmatch(r"_IOWR\(PROCFS_IOCTL_MAGIC,\s*(\d+),\s*struct pm_scan_arg\)",
                     dfs["PAGEMAP_SCAN"])
    assert m and dfs["PROCFS_IOCTL_MAGIC"] == "'f'"
    assert u.PAGEMAP_SCAN == _ioc(3, ord("f"), int(m.group(1)), 96)
