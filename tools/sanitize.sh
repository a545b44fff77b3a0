#!/usr/bin/env bash
# Build cnn_core with AddressSanitizer + UndefinedBehaviorSanitizer and run the kernel tests
# under it -- or, with NNSCRATCH_SANITIZER=thread, with ThreadSanitizer and run the threaded
# tests under it; exit non-zero on any test failure or any sanitizer report. With
# NNSCRATCH_SANITIZER=plain, no sanitizer: the plain-C build (-DNN_PLAIN_C: what a compiler
# without GCC's extensions, such as MSVC, compiles of src/*.h) and the kernel and layer tests.
#
#   tools/sanitize.sh [PYTHON] [pytest arguments...]
#   NNSCRATCH_SANITIZER=thread tools/sanitize.sh [PYTHON] [pytest arguments...]
#   NNSCRATCH_SANITIZER=plain tools/sanitize.sh [PYTHON] [pytest arguments...]
#
# PYTHON: the interpreter to build and test with (default: $PYTHON, else python3). It needs
# numpy, Cython >= 3, setuptools and pytest; the package may be pip-installed there, the
# sanitized modules come first on sys.path anyway (the script prints where cnn_core comes
# from and refuses to run if it is not the sanitized copy).
# pytest arguments: replace the default list of kernel tests (KERNEL_TESTS below); paths
# are relative to the checkout's root, e.g.
#   tools/sanitize.sh /work/venv/bin/python tests/kernels/test_gemm.py -k trans
#
# How
# ---
# * The sources (setup.py, cnn_core/, src/, python/, tests/: tracked and new files as they
#   are in the working tree, nothing ignored, so no .so, .c or build/) are copied into a
#   temporary directory and built there with `setup.py build_ext --inplace`: the checkout
#   never gets a .so that would shadow or replace the normal build.
# * NNSCRATCH_DEBUG=1: Cython's bounds, wraparound, initialised-view and None checks on,
#   -O0 -g (setup.py). NNSCRATCH_CFLAGS adds -fsanitize=address,undefined
#   -fno-omit-frame-pointer and -O1 (the level ASan's documentation suggests; it comes
#   after -O0 and wins). The team's threads (src/nn_team.h) run in the debug build as in
#   any other, so the threaded paths (slabs, per-thread scratch) are checked too.
#   Note: CPython builds extensions with -fwrapv, so signed overflow wraps (no UBSan report).
# * The tests run with the GCC ASan runtime in LD_PRELOAD (Python itself is not
#   instrumented), ASAN_OPTIONS=detect_leaks=0 (CPython keeps objects alive at exit by
#   design; allocations over 4 GiB return NULL, i.e. MemoryError, rather than filling the
#   machine) and UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1: the first report ends
#   the process with a non-zero status, which fails pytest (or the test whose child it
#   was). The output is also searched for reports, in case a test ignored a child's status.
#
# * ThreadSanitizer (NNSCRATCH_SANITIZER=thread): -fsanitize=thread -O1 -g without the debug
#   checks, libtsan in LD_PRELOAD, TSAN_OPTIONS=halt_on_error=1, OPENBLAS_NUM_THREADS=1
#   (OpenBLAS's own threads are not instrumented: TSan cannot see their synchronisation).
#   The tests that fork a multi-threaded process are left out (TSan does not support
#   threads in such a child), and so is the test that counts the process's threads (TSan
#   adds one). It checks the team (src/nn_team.h) and every kernel's parts for data races.
#
# * Plain C (NNSCRATCH_SANITIZER=plain): -DNN_PLAIN_C, -O3, no debug checks: no vector types,
#   no x86 intrinsics, no __builtin_* (src/nn_cpu.h's NN_GNU is 0), so the portable
#   micro-kernels run as scalar C -- the path an MSVC build takes (docs/design.md). The
#   kernel tests (twins, threads, edge tiles) and the layer, gradient and training tests
#   must pass on it; the bits equal the vector build's with NN_ISA=generic
#   (tests/library/test_portability.py checks the kernels byte for byte).
#
# Environment: PYTHON, CC (default gcc), NNSCRATCH_SANITIZE_KEEP=1 keeps the temporary
# directory (printed) for a look at the build (build.log) or the test output (pytest.log).
# Takes ~1-2 min on 2 cores: the build ~35-90 s, the tests ~20-30 s.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools/lib/worktree.sh
. "$ROOT/tools/lib/worktree.sh"
PY_NAME="${1:-${PYTHON:-python3}}"
[ $# -gt 0 ] && shift
PY="$(command -v "$PY_NAME" || true)"
if [ -z "$PY" ]; then
    echo "sanitize: no python interpreter '$PY_NAME'" >&2
    exit 2
fi

# The kernel tests: every compiled kernel against its NumPy twin, the argument checks and
# the threaded paths with the micro-kernel fallbacks (all the code in cnn_core/*.pyx, src/).
# The fuzz test's child processes inherit the environment, so they run sanitized as well.
KERNEL_TESTS=(
    tests/kernels/test_gemm.py tests/kernels/test_activations.py tests/kernels/test_losses.py
    tests/kernels/test_optim_kernels.py tests/kernels/test_conv.py
    tests/kernels/test_batchnorm.py tests/kernels/test_kernel_validation.py
    tests/kernels/test_kernel_threads.py tests/kernels/test_kernels_hypothesis.py
    tests/kernels/test_fuzz.py tests/kernels/test_linear_chain.py
    tests/kernels/test_linear_chain_backward.py tests/kernels/test_duo.py
    tests/kernels/test_take_rows.py tests/kernels/test_lying_arrays.py
    tests/kernels/test_overlapping_buffers.py
)
# ThreadSanitizer: the tests that run kernels on several threads, or from several threads
THREAD_TESTS=(
    tests/kernels/test_kernel_threads.py tests/kernels/test_duo.py
    tests/kernels/test_linear_chain.py tests/kernels/test_linear_chain_backward.py
    tests/kernels/test_conv.py tests/kernels/test_batchnorm.py tests/kernels/test_optim_kernels.py
    tests/kernels/test_take_rows.py tests/kernels/test_activations.py tests/kernels/test_losses.py
    tests/library/test_sharing.py tests/library/test_concurrency.py tests/library/test_model.py
)
# plain C: the kernel tests and what runs them in a model
PLAIN_TESTS=(
    "${KERNEL_TESTS[@]}" tests/library/test_layers.py tests/library/test_gradcheck.py
    tests/library/test_conv_layers.py tests/library/test_fit.py tests/fast
)
MODE="${NNSCRATCH_SANITIZER:-address}"
case "$MODE" in
    address) DEFAULT_TESTS=("${KERNEL_TESTS[@]}"); SELECT=() ;;
    thread) DEFAULT_TESTS=("${THREAD_TESTS[@]}")
            SELECT=(-k "not fork and not pool and not issues and not takes_effect") ;;
    plain) DEFAULT_TESTS=("${PLAIN_TESTS[@]}"); SELECT=() ;;
    *) echo "sanitize: NNSCRATCH_SANITIZER must be address, thread or plain, got '$MODE'" >&2
       exit 2 ;;
esac
if [ $# -gt 0 ]; then
    TESTS=("$@")
    SELECT=()
else
    TESTS=()
    for t in "${DEFAULT_TESTS[@]}"; do
        if [ -e "$ROOT/$t" ]; then TESTS+=("$t"); fi
    done
fi

export CC="${CC:-gcc}"
if ! "$PY" -c "import Cython, numpy, setuptools, pytest" 2>/dev/null; then
    echo "sanitize: $PY needs numpy, Cython>=3, setuptools and pytest to build and test" \
         "(pip install 'Cython>=3.0' setuptools pytest)" >&2
    exit 2
fi
RUNTIME_NAME=$([ "$MODE" = thread ] && echo libtsan || echo libasan)
LIBASAN=""
[ "$MODE" = plain ] || LIBASAN="$("$CC" -print-file-name=$RUNTIME_NAME.so)"
if [ "$MODE" != plain ] && { [ "${LIBASAN#/}" = "$LIBASAN" ] || [ ! -e "$LIBASAN" ]; }; then
    echo "sanitize: $CC has no $MODE sanitizer runtime ($RUNTIME_NAME.so); install it (Debian:" \
         "apt-get install libasan8 / libtsan2, part of gcc)" >&2
    exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nnscratch-sanitize.XXXXXX")"
if [ "${NNSCRATCH_SANITIZE_KEEP:-0}" != "0" ]; then
    echo "sanitize: keeping $WORK"
else
    trap 'rm -rf "$WORK"' EXIT
fi
TREE="$WORK/tree"
mkdir -p "$TREE"

echo "== sanitize: copy the sources into $TREE"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # the folders the build and the tests need (not the whole tree: a venv inside the
    # checkout, such as CI's .venv-ci, is not necessarily ignored)
    copy_worktree "$ROOT" "$TREE" setup.py cnn_core src python tests
else
    (cd "$ROOT" && tar -cf - --exclude='*.so' --exclude='cnn_core/*.c' --exclude=build \
        --exclude='.venv*' --exclude='__pycache__' setup.py cnn_core src python tests) \
        | tar -xf - -C "$TREE"
fi
# setup.py holds everything the build needs; without pyproject.toml an older setuptools
# (a Python 3.11 venv's own) does not trip over the [project] table's newer fields
rm -f "$TREE/pyproject.toml"

start=$(date +%s)
OPT="-O1 -g"
if [ "$MODE" = thread ]; then
    echo "== sanitize: build (ThreadSanitizer) with $PY"
    SAN_FLAGS="-fsanitize=thread"
    DEBUG=0
elif [ "$MODE" = plain ]; then
    echo "== sanitize: build (plain C: -DNN_PLAIN_C, no sanitizer) with $PY"
    SAN_FLAGS=""
    OPT="-DNN_PLAIN_C"
    DEBUG=0
else
    echo "== sanitize: build (ASan + UBSan, Cython checks on) with $PY"
    SAN_FLAGS="-fsanitize=address,undefined -fno-omit-frame-pointer"
    DEBUG=1
fi
(
    cd "$TREE"
    NNSCRATCH_DEBUG=$DEBUG \
    NNSCRATCH_CFLAGS="$SAN_FLAGS $OPT" \
    NNSCRATCH_LDFLAGS="$SAN_FLAGS" \
        "$PY" setup.py -q build_ext --inplace --parallel 2 >"$WORK/build.log" 2>&1
) || { tail -n 60 "$WORK/build.log" >&2; echo "sanitize: build failed" >&2; exit 1; }
echo "   built in $(( $(date +%s) - start )) s"
for so in "$TREE"/cnn_core/*.so; do
    [ "$MODE" != plain ] || break
    if ! readelf -d "$so" | grep -q "$RUNTIME_NAME"; then
        echo "sanitize: $so is not linked with $RUNTIME_NAME" >&2
        exit 1
    fi
done

# the environment of everything the tests run, children included
export PYTHONPATH="$TREE:$TREE/python${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:allocator_may_return_null=1:max_allocation_size_mb=4096"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0"
if [ "$MODE" = thread ]; then export OPENBLAS_NUM_THREADS=1; fi

echo "== sanitize: which cnn_core the tests import"
(cd "$TREE" && LD_PRELOAD="$LIBASAN" "$PY" -c "
import sys, cnn_core, cnn_core._gemm as g, cnn_core._linear as lin
print('   cnn_core from', cnn_core.__file__)
print('   _gemm from   ', g.__file__)
print('   _linear from ', lin.__file__)
print('   micro-kernel', cnn_core.gemm_kernel_name(), '| threads', cnn_core.get_num_threads())
ok = all(m.__file__.startswith('$TREE/') for m in (g, lin))
if '$MODE' == 'plain' and not cnn_core.gemm_kernel_name().startswith('generic'):
    print('   the plain-C build picked', cnn_core.gemm_kernel_name()); ok = False
sys.exit(0 if ok else 1)
") || { echo "sanitize: the sanitized cnn_core is not the one imported" >&2; exit 1; }

echo "== sanitize: pytest ${TESTS[*]}"
start=$(date +%s)
set +e
(cd "$TREE" && LD_PRELOAD="$LIBASAN" "$PY" -m pytest -p no:cacheprovider -q -rfE \
    "${TESTS[@]}" "${SELECT[@]}") 2>&1 | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e
echo "   tests ran in $(( $(date +%s) - start )) s (pytest exit status $status)"

if grep -qE 'runtime error:|ERROR: AddressSanitizer|SUMMARY: (Address|UndefinedBehavior|Thread)Sanitizer|WARNING: ThreadSanitizer' \
        "$WORK/pytest.log"; then
    echo "sanitize: the output holds sanitizer reports (above)" >&2
    [ "$status" -ne 0 ] || status=1
fi
if [ "$status" -ne 0 ]; then
    echo "sanitize: FAILED" >&2
else
    case "$MODE" in
        plain) echo "sanitize: the plain-C build passed every test" ;;
        *) echo "sanitize: clean (no $([ "$MODE" = thread ] && echo TSan || echo ASan/UBSan) report, all tests passed)" ;;
    esac
fi
exit "$status"
