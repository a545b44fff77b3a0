"""What lets the package build and run beyond GCC on x86-64 Linux (docs/design.md, "Builds
and platforms"): no C `long` for sizes (32 bits on Windows), no OpenMP anywhere (macOS's
compilers have none by default), and metadata that claims only what tools/package.sh tests."""
import glob
import os
import re
import sys
from importlib import metadata

import pytest

import cnn_core

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "cnn_core", "*.pyx"))
                 + glob.glob(os.path.join(ROOT, "cnn_core", "*.pxd"))
                 + glob.glob(os.path.join(ROOT, "src", "*.h")))

# `long` used as a type: before a name and then a declarator's end, or before `*`, `)`, `,`,
# `>` (a cast or an unnamed parameter) -- not `long long`, not `long double`, not prose
# ("as long as it ...")
LONG_TYPE = re.compile(r"(?<![\w])(?<!unsigned )(?<!long )long(?! long)(?! double)"
                       r"(?=(\s*\*)*\s*(\)|>|,|\s+\**\s*[A-Za-z_]\w*\s*(\[|,|;|\)|=|:|#|$|\()))",
                       re.MULTILINE)


def long_types(text):
    return [text[:m.start()].count("\n") + 1 for m in LONG_TYPE.finditer(text)]


def test_the_long_finder_finds_long_types():
    # the check below can fail: each of these uses `long` as a type
    for code in ("cdef long n = 0", "static long f(long x) {", "cdef long *offset   # sizes",
                 "return <long> x", "typedef void (*fn)(long, int);", "(long)t.tv_sec"):
        assert long_types(code), code
    for prose in ("as long as it lives", "unsigned long long job", "a 1024-long sum in one block",
                  "long double x;", "twice as long when a job"):
        assert not long_types(prose), prose


@pytest.mark.parametrize("path", SOURCES, ids=os.path.basename)
def test_no_c_long_for_sizes(path):
    # Windows' long is 32 bits: a size or an index over 2^31 would wrap. Sizes, indices and
    # counts are Py_ssize_t (Cython) or ptrdiff_t (C headers): 64 bits wherever pointers are.
    lines = long_types(open(path).read())
    assert not lines, f"{os.path.relpath(path, ROOT)}: `long` as a type on lines {lines}"


def test_sources_are_checked():
    # the two tests above ran over every kernel source, not over nothing
    assert len([p for p in SOURCES if p.endswith(".pyx")]) >= 10
    assert len([p for p in SOURCES if p.endswith(".h")]) >= 8


def test_no_openmp_in_the_build_or_the_modules():
    # the threads are the library's own (src/nn_team.h): no compiler flag, no runtime library
    setup = open(os.path.join(ROOT, "setup.py")).read()
    for flag in ("-fopenmp", "-openmp", "/openmp", "-lgomp", "-lomp", "-Xpreprocessor"):
        assert flag not in setup, flag
    modules = glob.glob(os.path.join(os.path.dirname(cnn_core.__file__), "_*.so")) + \
        glob.glob(os.path.join(os.path.dirname(cnn_core.__file__), "_*.pyd"))
    assert len(modules) >= 10, modules
    for path in modules:
        data = open(path, "rb").read()
        for needle in (b"libgomp", b"libomp", b"libiomp", b"GOMP_", b"__kmpc_"):
            assert needle not in data, (path, needle)
    assert cnn_core.openmp_enabled() is False


def test_the_metadata_claims_what_is_tested():
    meta = metadata.metadata("nnscratch")
    low = tuple(int(p) for p in re.match(r">=\s*([0-9.]+)", meta["Requires-Python"]).group(1)
                .split("."))
    assert sys.version_info[:2] >= low       # this very run is on a Python it claims
    versions = sorted(tuple(int(p) for p in c.rsplit(" ", 1)[1].split("."))
                      for c in meta.get_all("Classifier")
                      if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    # the classifiers start at requires-python's lowest version (which tools/package.sh
    # builds from the sdist and tests), without gaps, and include this Python
    assert versions[0] == low
    assert versions == [(3, m) for m in range(low[1], versions[-1][1] + 1)]
    assert sys.version_info[:2] in versions
    requires = " ".join(meta.get_all("Requires-Dist"))
    assert re.search(r"numpy>=1\.23", requires) and re.search(r"tqdm>=4\.60", requires)
    assert meta["License-Expression"] == "MIT"


def test_numpy_c_api_target_matches_the_oldest_numpy_claimed():
    # setup.py compiles against whatever NumPy the build has, for the oldest NumPy the
    # dependencies allow (tools/package.sh runs the suite on that NumPy)
    setup = open(os.path.join(ROOT, "setup.py")).read()
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    target = re.search(r'"NPY_TARGET_VERSION", "NPY_(\d+)_(\d+)_API_VERSION"', setup)
    dependencies = re.search(r"^dependencies = \[(.*)\]$", pyproject, re.MULTILINE).group(1)
    oldest = re.search(r'"numpy>=(\d+)\.(\d+)"', dependencies)
    assert target and oldest and target.groups() == oldest.groups()


def test_ci_runs_every_tool_but_the_emulated_arm64_run():
    # each tools/ script that checks a build is run by .ci/run (arm64.sh, an emulated build
    # of ~15 minutes plus its tests, is run by hand: docs/design.md gives its result)
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    commands = "\n".join(line.split("#")[0] for line in ci.splitlines())
    scripts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "tools", "*.sh")))
    assert {"sanitize.sh", "package.sh", "cross_check.sh"} <= set(scripts)
    for script in scripts:
        if script != "arm64.sh":
            assert f"tools/{script}" in commands, script
    assert "CC=clang tools/package.sh" in commands                 # the clang build
    design = open(os.path.join(ROOT, "docs", "design.md")).read()
    assert "tools/arm64.sh" in design


def _c_compiler():
    # the compiler the build uses: $CC, else Python's own (sysconfig), else cc
    import shlex
    import shutil
    import sysconfig
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    assert shutil.which(cc[0]), (
        f"no C compiler {cc[0]!r}: building nnscratch needs one (README, 'Install'), and so "
        "does this test")
    return cc


def _run_plain_c_check(tmp_path, name, flags):
    import subprocess
    exe = str(tmp_path / name)
    build = subprocess.run(
        _c_compiler() + ["-std=c11", "-O2", "-Wall", "-Werror", "-Wno-unused-function"]
        + flags + ["-I", os.path.join(ROOT, "src"),
                   os.path.join(ROOT, "tests", "library", "plain_c_check.c"),
                   "-o", exe, "-lm", "-pthread"],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    run = subprocess.run([exe], capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode(errors="replace")
    return run.stdout


def test_plain_c_kernels_give_the_vector_kernels_bits(tmp_path):
    # Windows on paper (docs/design.md): a compiler without GCC's extensions (MSVC) gets the
    # portable micro-kernels, row kernels, packers and peak loop in plain C11. -DNN_PLAIN_C
    # builds that path here: tests/library/plain_c_check.c then poisons every GNU extension
    # (__attribute__, vector_size, __builtin_*, asm, typeof) before including src/*.h, so
    # the headers must compile without one, pedantically; and its output -- the kernels over
    # edge tiles, the four ways to read A and B, every write-back rule and the finite check
    # -- must be the same bytes as the vector kernels' (same sums, same order).
    vector = _run_plain_c_check(tmp_path, "vector", [])
    plain = _run_plain_c_check(tmp_path, "plain", ["-DNN_PLAIN_C", "-pedantic-errors"])
    assert len(vector) > 1_000_000            # every case ran and wrote its tile
    if plain != vector:
        first = next(i for i, (p, v) in enumerate(zip(plain, vector)) if p != v)
        raise AssertionError(f"the plain-C kernels differ from the vector kernels from byte "
                             f"{first} of {len(vector)}")


def test_the_poison_catches_a_gnu_extension(tmp_path):
    # the check above can fail: a header that uses a GNU extension in the plain-C path is a
    # build error there
    import shutil
    import subprocess
    shutil.copytree(os.path.join(ROOT, "src"), tmp_path / "src")
    cpu = tmp_path / "src" / "nn_cpu.h"
    text = cpu.read_text()
    assert "#define NN_PREFETCH(p) ((void)0)" in text
    cpu.write_text(text.replace("#define NN_PREFETCH(p) ((void)0)",
                                "#define NN_PREFETCH(p) __builtin_prefetch(p)"))
    build = subprocess.run(
        _c_compiler() + ["-std=c11", "-DNN_PLAIN_C", "-fsyntax-only",
                         "-I", str(tmp_path / "src"),
                         os.path.join(ROOT, "tests", "library", "plain_c_check.c")],
        capture_output=True, text=True)
    assert build.returncode != 0 and "poisoned" in build.stderr, build.stderr[-2000:]
