#!/usr/bin/env bash
# Build every kernel module for another CPU, in about a minute, without running it: setup.py's
# own build (its flags, macros and Cython directives) with a cross compiler, so that an
# x86-only call, a missing fallback or an undeclared function breaks here rather than on a
# learner's ARM laptop. (The emulated arm64 build that also runs the tests is tools/arm64.sh.)
#
#   tools/cross_check.sh [PYTHON]          # PYTHON: has Cython, NumPy, setuptools (default python3)
#
# CROSS_CC: the compiler (default aarch64-linux-gnu-gcc; Debian: apt-get install
# gcc-aarch64-linux-gnu). The host's Python and NumPy headers stand in for the target's (on
# 64-bit Linux they declare the same types). Besides setup.py's -Werror flags, an
# incompatible pointer or an int/pointer conversion is an error here. Exits 1 if the build
# fails or makes a module for another machine; prints the count of NEON vector FMAs in the
# GEMM's module (the portable micro-kernels' vector code compiled for the target).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools/lib/worktree.sh
. "$ROOT/tools/lib/worktree.sh"
PY="$(command -v "${1:-${PYTHON:-python3}}" || true)"
[ -n "$PY" ] || { echo "cross_check: no python interpreter '${1:-python3}'" >&2; exit 2; }
CROSS_CC="${CROSS_CC:-aarch64-linux-gnu-gcc}"
command -v "$CROSS_CC" >/dev/null || {
    echo "cross_check: no $CROSS_CC (Debian: apt-get install gcc-aarch64-linux-gnu)" >&2; exit 2; }
MACHINE="$("$CROSS_CC" -dumpmachine)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nnscratch-cross.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
copy_worktree "$ROOT" "$WORK/tree" setup.py cnn_core src
# setup.py holds everything the build needs (as in tools/sanitize.sh: no pyproject.toml)

echo "cross_check: $("$CROSS_CC" --version | head -n 1)"
start=$(date +%s)
if ! (cd "$WORK/tree" &&
      CC="$CROSS_CC" LDSHARED="$CROSS_CC -shared" \
      NNSCRATCH_CFLAGS="-Werror=incompatible-pointer-types -Werror=int-conversion" \
          "$PY" setup.py -q build_ext -b "$WORK/out" -t "$WORK/tmp" --parallel 2 \
          >"$WORK/build.log" 2>&1); then
    grep -E "error" "$WORK/build.log" | head -n 20 >&2
    echo "cross_check: the build for $MACHINE FAILED" >&2
    exit 1
fi
echo "   built in $(( $(date +%s) - start )) s"
status=0
WANT="$(echo "$MACHINE" | cut -d- -f1)"                  # aarch64
for so in "$WORK"/out/cnn_core/_*.so; do
    name="$(basename "$so" | cut -d. -f1)"
    if readelf -h "$so" | grep -qi "Machine:.*${WANT/aarch64/AArch64}"; then
        echo "   $name: ok"
    else
        echo "   $name: not built for $MACHINE"; status=1
    fi
done
OBJDUMP="${CROSS_CC%gcc}objdump"
if command -v "$OBJDUMP" >/dev/null; then
    echo "   vector FMAs (fmla v...) in _gemm: $("$OBJDUMP" -d "$WORK"/out/cnn_core/_gemm.*.so | grep -c 'fmla\s*v' || true)"
fi
[ $status -eq 0 ] && echo "cross_check: every module builds for $MACHINE"
exit $status
