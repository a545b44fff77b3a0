#!/usr/bin/env bash
# Compile every kernel module for another CPU, in seconds, without running it: Cython's C
# output, compiled to an object file by a cross compiler with setup.py's flags, so that an x86-only
# call, a missing fallback or an undeclared function breaks here rather than on a learner's
# ARM laptop. (The emulated arm64 build that also runs the tests is tools/arm64.sh.)
#
#   tools/cross_check.sh [PYTHON]          # PYTHON: has Cython and NumPy (default python3)
#
# CROSS_CC: the compiler (default aarch64-linux-gnu-gcc; Debian: apt-get install
# gcc-aarch64-linux-gnu). The host's Python and NumPy headers stand in for the target's (on
# 64-bit Linux they declare the same types). Exits 1 on any error or warning of the kinds
# -Werror turns on below; prints the count of NEON vector FMA instructions in the GEMM's object
# (the portable micro-kernel's vector code compiled for the target).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$(command -v "${1:-${PYTHON:-python3}}" || true)"
[ -n "$PY" ] || { echo "cross_check: no python interpreter '${1:-python3}'" >&2; exit 2; }
CROSS_CC="${CROSS_CC:-aarch64-linux-gnu-gcc}"
command -v "$CROSS_CC" >/dev/null || {
    echo "cross_check: no $CROSS_CC (Debian: apt-get install gcc-aarch64-linux-gnu)" >&2; exit 2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nnscratch-cross.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
PYINC="$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['include'])")"
NPINC="$("$PY" -c "import numpy; print(numpy.get_include())")"
# setup.py's flags and macros, read from it (one source of truth)
read -r -a FLAGS < <("$PY" - "$ROOT/setup.py" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
flags = []
for group in re.findall(r'compile_args \+?= \[([^\]]*)\]', text):
    flags += re.findall(r'"([^"]+)"', group)
flags = ["-O3"] + [f for f in flags if f not in ("-O0", "-g")]   # the release build's flags
for name, value in re.findall(r'\("(NPY_\w+)", "(\w+)"\)', text):
    flags.append(f"-D{name}={value}")
print(" ".join(flags))
EOF
)
echo "cross_check: $("$CROSS_CC" --version | head -n 1)"
echo "   flags: ${FLAGS[*]}"
status=0
for pyx in "$ROOT"/cnn_core/_*.pyx; do
    name="$(basename "$pyx" .pyx)"
    # setup.py's DIRECTIVES for a release build (NNSCRATCH_DEBUG unset)
    (cd "$ROOT" && "$PY" -m cython -3 -I . -o "$WORK/$name.c" \
        -X boundscheck=False,wraparound=False,initializedcheck=False,nonecheck=False,cdivision=True \
        "cnn_core/$name.pyx" >/dev/null)
    if "$CROSS_CC" -c "${FLAGS[@]}" -fPIC -Werror=implicit-function-declaration \
            -Werror=incompatible-pointer-types -Werror=int-conversion \
            -I "$ROOT/src" -I "$PYINC" -I "$NPINC" -o "$WORK/$name.o" "$WORK/$name.c" \
            2>"$WORK/$name.log"; then
        echo "   $name: ok"
    else
        echo "   $name: FAILED"; grep -E "error" "$WORK/$name.log" | head -n 5; status=1
    fi
done
if [ -f "$WORK/_gemm.o" ] && command -v "${CROSS_CC%gcc}objdump" >/dev/null; then
    echo "   vector FMAs (fmla v...) in _gemm.o: $("${CROSS_CC%gcc}objdump" -d "$WORK/_gemm.o" | grep -c 'fmla\s*v' || true)"
fi
[ $status -eq 0 ] && echo "cross_check: every module compiles for $("$CROSS_CC" -dumpmachine)"
exit $status
