"""Build the memwatch._memwatch C++ extension (metadata lives in pyproject.toml)."""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ext_modules = [
    Pybind11Extension(
        "memwatch._memwatch",
        sorted(glob("src/*.cpp")),
        # "." so that src/uapi.hpp finds the canonical uapi header as
        # linux/memwatch.h (also on the include path as <linux/memwatch.h>).
        include_dirs=["."],
        cxx_std=17,
        extra_compile_args=["-Wall", "-Wextra"],
        depends=sorted(glob("src/*.hpp")) + ["linux/memwatch.h"],
    ),
]

setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
