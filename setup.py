"""Build the compiled core `cnn_core` (Cython -> C) and install it beside `nnscratch`.

Every extension is built from the one table EXTENSIONS below, with the same flags.

Environment switches
--------------------
NNSCRATCH_DEBUG=1     bounds checks, wraparound and initialised-memoryview checks back on,
                      -O0 -g: for a debugging or sanitizer build.
NNSCRATCH_CFLAGS      extra compiler flags (e.g. "-fsanitize=address,undefined").
NNSCRATCH_LDFLAGS     extra linker flags.

No -march=native and no -ffast-math (only -fno-trapping-math, which changes no result): one
build runs on any x86-64, and the GEMM picks its AVX-512 / AVX2 / portable micro-kernel at run
time (src/nn_cpu.h). No OpenMP: the kernels' threads are the library's own (src/nn_team.h,
POSIX threads), so any C11 compiler builds the same threaded library.
"""
import os

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("NNSCRATCH_DEBUG", "") not in ("", "0")

# module name -> its .pyx; one kernel family per file (docs/design.md)
EXTENSIONS = {
    "cnn_core._parallel": "cnn_core/_parallel.pyx",
    "cnn_core._checks": "cnn_core/_checks.pyx",
    "cnn_core._gemm": "cnn_core/_gemm.pyx",
    "cnn_core._linear": "cnn_core/_linear.pyx",
    "cnn_core._activations": "cnn_core/_activations.pyx",
    "cnn_core._losses": "cnn_core/_losses.pyx",
    "cnn_core._optim": "cnn_core/_optim.pyx",
    "cnn_core._conv": "cnn_core/_conv.pyx",
    "cnn_core._norm": "cnn_core/_norm.pyx",
    "cnn_core._data": "cnn_core/_data.pyx",
    "cnn_core._budget": "cnn_core/_budget.pyx",
}

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "nonecheck": DEBUG,
    "embedsignature": True,
}


compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
compile_args += ["-std=gnu11", "-pthread", "-Wno-unused-function", "-Wno-unreachable-code"]
# a C function used without its declaration (e.g. a NumPy C-API call newer than the NumPy
# target below) is a build error here, not an "undefined symbol" at import time
compile_args += ["-Werror=implicit-function-declaration"]
# FP exceptions are never trapped (CPython runs with them masked), so let the compiler
# compute both sides of a select: branch-free, vectorised elementwise loops. Unlike
# -ffast-math this changes no result: rounding, NaN and infinity rules are kept.
compile_args += ["-fno-trapping-math"]
compile_args += os.environ.get("NNSCRATCH_CFLAGS", "").split()
link_args = ["-pthread"] + os.environ.get("NNSCRATCH_LDFLAGS", "").split()
# The NumPy C API: no deprecated names, and the oldest NumPy the modules run with is the
# oldest pyproject.toml allows (numpy>=1.23), whatever NumPy the build itself compiles against
# (a build with NumPy 2.x makes modules that import under NumPy 1.23 .. 2.x).
macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
          ("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")]

extensions = [
    Extension(
        name,
        [source],
        include_dirs=["src", np.get_include()],
        depends=[os.path.join("src", f) for f in os.listdir("src") if f.endswith(".h")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        define_macros=macros,
    )
    for name, source in EXTENSIONS.items()
]

setup(
    packages=["cnn_core", "cnn_core.reference", "nnscratch", "nnscratch._fast", "nnscratch.data"],
    package_dir={"cnn_core": "cnn_core", "nnscratch": "python/nnscratch"},
    # the wheel: compiled modules, the Python packages, the kernels' Cython sources (the
    # learner reads them beside the twins) and the sample; never the generated C (MANIFEST.in
    # says what the sdist holds)
    package_data={"cnn_core": ["*.pxd", "*.pyx"], "nnscratch": ["py.typed"],
                  "nnscratch.data": ["*.npz", "*.md"]},
    exclude_package_data={"cnn_core": ["*.c"]},
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        quiet=True,
    ),
    zip_safe=False,
)
