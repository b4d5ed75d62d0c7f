"""Build the memwatch._memwatch C++ extension (metadata lives in pyproject.toml)."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "memwatch._memwatch",
        sorted(glob("src/*.cpp")),
        # src/uapi.hpp includes "../linux/memwatch.h" by relative path: no
        # include_dirs, so the repository root never shadows a system header.
        cxx_std=17,
        extra_compile_args=["-Wall", "-Wextra"],
        depends=sorted(glob("src/*.hpp"))
        + ["linux/memwatch.h", "memwatch/include/memwatch/memwatch_capi.h"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
