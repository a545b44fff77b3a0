#!/usr/bin/env bash
# Build and test nnscratch on arm64 (aarch64) Linux, emulated with qemu-user, in a Debian
# bookworm arm64 chroot. Needs root (debootstrap, mount, chroot).
#
#   sudo tools/arm64.sh
#   sudo NNSCRATCH_ARM64_TESTS=all tools/arm64.sh                  # the whole suite (~45 min)
#   sudo NNSCRATCH_ARM64_TESTS="tests/kernels/test_gemm.py" tools/arm64.sh
#
# What it does, each run (idempotent: the chroot is made once and reused):
#   1. makes the arm64 root with debootstrap if it is missing (qemu-user-static, debootstrap
#      and binfmt-support are apt-get installed on the host if missing; without a registered
#      binfmt handler it bootstraps with --foreign and runs the second stage through qemu);
#   2. mounts /proc, /sys, /dev (recursively, slave) and the host's Fashion-MNIST
#      (/usr/share/datasets, read-only) into it -- unmounted on exit -- and copies
#      /etc/resolv.conf and the host's local CAs (/usr/local/share/ca-certificates) so that
#      pip works;
#   3. copies the committed tree (git archive HEAD: no build outputs, no uncommitted edits)
#      to /root/nnscratch in the chroot (or the working tree: NNSCRATCH_ARM64_TREE below);
#   4. in a fresh venv there: pip install ".[test]" (numpy, Cython wheels for aarch64 from
#      PyPI; the build uses pyproject's build-system requirements), prints uname -m,
#      platform.machine() and `nnscratch info`, counts NEON instructions in the built
#      _gemm*.so (objdump), and runs the kernel, layer and training tests with pytest from
#      the checkout (as .ci/run does: the installed package is imported, tests/ is on
#      sys.path, not the checkout root). PyTorch is not installed: the torch comparisons are
#      listed as NOT RUN;
#   5. runs `nnscratch train --epochs 1` (Fashion-MNIST if found, else the bundled sample);
#   6. prints a summary: GEMM micro-kernel (ISA path), NEON count, pytest summary, train
#      accuracy, the time of each stage.
# Heavy steps run under `nice -n 10`. Exit status: non-zero if the build, a test or the
# training run failed (the summary is printed anyway).
#
# Environment:
#   NNSCRATCH_ARM64_ROOT   the chroot (default /var/tmp/nnscratch-arm64; must be outside
#                          the checkout). Delete it to start from scratch.
#   NNSCRATCH_ARM64_TESTS  pytest paths, relative to the checkout ("all": tests/). Default:
#                          the kernel tests (tests/kernels: every kernel against its NumPy
#                          twin) and the layer, gradient, model and training tests (below).
#                          Emulated on 2 x86-64 cores: the build ~13 min, these tests ~10-15,
#                          train ~2-3; the whole suite ~45 min, and its tests that time a
#                          worker's nap against a GEMM (test_sharing's late-worker tests)
#                          fail there: a 300^3 GEMM takes ~150 ms emulated, 0.7 ms native.
#   NNSCRATCH_ARM64_PYTEST_ARGS  default "-q -x -p no:cacheprovider --durations=15"
#   NNSCRATCH_ARM64_TREE   head (default: git archive HEAD) or worktree (the tracked and new
#                          files as they are in the working tree, nothing ignored: to try
#                          an uncommitted fix)
#   NNSCRATCH_ARM64_MIRROR default http://deb.debian.org/debian
#   NNSCRATCH_ARM64_REUSE=1  skip the venv and build (~13 min emulated) when /root/venv holds
#                          a build of the same commit (NNSCRATCH_ARM64_TREE=head only): to
#                          rerun tests. Default: a fresh venv and build every run.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "tools/arm64.sh: must be run as root (debootstrap, mount and chroot need it):" >&2
    echo "    sudo $0" >&2
    exit 1
fi

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=tools/lib/worktree.sh
. "$REPO/tools/lib/worktree.sh"
ROOT="${NNSCRATCH_ARM64_ROOT:-/var/tmp/nnscratch-arm64}"
ROOT="$(realpath -m "$ROOT")"
MIRROR="${NNSCRATCH_ARM64_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="python3,python3-venv,python3-dev,gcc,libc6-dev,binutils,ca-certificates"
MARKER="$ROOT/.nnscratch-arm64-ready"
DEFAULT_TESTS="tests/kernels tests/library/test_layers.py tests/library/test_conv_layers.py
    tests/library/test_gradcheck.py tests/library/test_model.py tests/library/test_module.py
    tests/library/test_optimizers.py tests/library/test_fit.py"
TESTS="${NNSCRATCH_ARM64_TESTS:-$DEFAULT_TESTS}"
[ "$TESTS" = all ] && TESTS=tests
PYTEST_ARGS="${NNSCRATCH_ARM64_PYTEST_ARGS:--q -x -p no:cacheprovider --durations=15}"
TREE="${NNSCRATCH_ARM64_TREE:-head}"
case "$TREE" in head|worktree) ;; *) echo "NNSCRATCH_ARM64_TREE: head or worktree" >&2; exit 2 ;; esac
export DEBIAN_FRONTEND=noninteractive

case "$ROOT/" in
    "$REPO"/*) echo "tools/arm64.sh: NNSCRATCH_ARM64_ROOT=$ROOT is inside the checkout" >&2
               exit 2 ;;
    /) echo "tools/arm64.sh: NNSCRATCH_ARM64_ROOT must not be /" >&2; exit 2 ;;
esac

START=$SECONDS
declare -a STAGES=()
stage_done() {   # stage_done NAME START_SECONDS
    STAGES+=("$(printf '%-34s %5ss' "$1" "$((SECONDS - $2))")")
}
say() { printf '\n== %s\n' "$*"; }

# --- 1. host tools, the arm64 root ------------------------------------------------------

say "host tools"
t=$SECONDS
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
command -v update-binfmts >/dev/null || missing+=(binfmt-support)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
BINFMT=/proc/sys/fs/binfmt_misc/qemu-aarch64
if [ ! -e "$BINFMT" ]; then
    mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true
    update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
if [ -e "$BINFMT" ] && grep -q '^enabled' "$BINFMT"; then
    INTERP="$(sed -n 's/^interpreter //p' "$BINFMT")"
    FLAGS="$(sed -n 's/^flags: //p' "$BINFMT")"
    echo "binfmt qemu-aarch64: $INTERP (flags $FLAGS)"
    HAVE_BINFMT=1
else
    echo "binfmt qemu-aarch64 is not registered: debootstrap --foreign, second stage through qemu"
    HAVE_BINFMT=0
    INTERP="" FLAGS=""
fi
# Without the F flag the kernel looks the interpreter up inside the chroot: put it there.
install_interpreter() {
    local qemu
    qemu="$(command -v qemu-aarch64-static)"
    install -D -m 755 "$qemu" "$ROOT/usr/bin/qemu-aarch64-static"
    if [ -n "$INTERP" ] && [[ "$FLAGS" != *F* ]]; then
        install -D -m 755 "$qemu" "$ROOT$INTERP"
    fi
}
stage_done "host tools" "$t"

# Every mount under the root, deepest first (to unmount before any removal).
mounts_under_root() {
    awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 {print $2}' /proc/self/mounts | sort -r
}

say "arm64 root: $ROOT"
t=$SECONDS
if [ -f "$MARKER" ]; then
    echo "present (delete $ROOT to rebuild it)"
else
    if [ -d "$ROOT" ] && [ -n "$(ls -A "$ROOT")" ]; then
        # a half-made root from an interrupted debootstrap: start again, never through a mount
        if [ ! -d "$ROOT/debootstrap" ] && [ ! -x "$ROOT/usr/bin/python3" ]; then
            echo "tools/arm64.sh: $ROOT exists, is not empty and is not a debootstrap root;" \
                 "move it away or set NNSCRATCH_ARM64_ROOT" >&2
            exit 2
        fi
        mounts_under_root | while read -r m; do umount -R "$m" || umount -l "$m"; done
        if [ -n "$(mounts_under_root)" ]; then
            echo "tools/arm64.sh: still mounted under $ROOT:" $(mounts_under_root) >&2; exit 2
        fi
        echo "removing the unfinished root"
        rm -rf --one-file-system "$ROOT"
    fi
    mkdir -p "$ROOT"
    if [ "$HAVE_BINFMT" = 1 ]; then
        nice -n 10 debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" \
            bookworm "$ROOT" "$MIRROR"
    else
        nice -n 10 debootstrap --arch=arm64 --variant=minbase --include="$PACKAGES" \
            --foreign bookworm "$ROOT" "$MIRROR"
        install_interpreter
        nice -n 10 chroot "$ROOT" /usr/bin/qemu-aarch64-static /bin/bash \
            /debootstrap/debootstrap --second-stage
    fi
    date -u +%FT%TZ > "$MARKER"
fi
install_interpreter
stage_done "debootstrap (arm64 root)" "$t"

# --- 2. mounts, resolv.conf ---------------------------------------------------------------

say "mounts"
t=$SECONDS
MOUNTED=()
cleanup() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -R "${MOUNTED[i]}" 2>/dev/null || umount -l "${MOUNTED[i]}" 2>/dev/null || true
    done
    MOUNTED=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM
bind() {   # bind SOURCE TARGET [ro]: recursive, slave (an unmount never reaches the host)
    mkdir -p "$2"
    if mountpoint -q "$2"; then
        echo "already mounted: $2 (left from an earlier run; reused)"
        return
    fi
    mount --rbind "$1" "$2"
    mount --make-rslave "$2"
    MOUNTED+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2"; fi
}
mkdir -p "$ROOT/proc"
if ! mountpoint -q "$ROOT/proc"; then
    mount -t proc proc "$ROOT/proc"
    MOUNTED+=("$ROOT/proc")
fi
bind /sys "$ROOT/sys"
bind /dev "$ROOT/dev"
DATA_FROM=""
if [ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    bind /usr/share/datasets "$ROOT/usr/share/datasets" ro
    DATA_FROM="host /usr/share/datasets (bind-mounted read-only)"
fi
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's local CAs (e.g. a TLS-inspecting proxy's, which pip on the host trusts through
# the system bundle): trusted in the chroot too, else pip fails "certificate verify failed".
for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -f "$crt" ] || continue
    if ! cmp -s "$crt" "$ROOT$crt"; then
        install -D -m 644 "$crt" "$ROOT$crt"
        NEW_CA=1
    fi
done
if [ "${NEW_CA:-0}" = 1 ]; then chroot "$ROOT" update-ca-certificates >/dev/null; fi
stage_done "mounts, resolv.conf, CAs" "$t"

# --- 3. the committed tree ----------------------------------------------------------------

COMMIT="$(git -C "$REPO" rev-parse --short HEAD)"
rm -rf --one-file-system "$ROOT/root/nnscratch"
mkdir -p "$ROOT/root/nnscratch"
if [ "$TREE" = worktree ]; then
    say "copy the working tree (tracked and new files as they are now, nothing ignored)"
    t=$SECONDS
    COMMIT="$COMMIT + working-tree changes"
    copy_worktree "$REPO" "$ROOT/root/nnscratch"
else
    say "copy the committed tree (git archive HEAD)"
    t=$SECONDS
    git -C "$REPO" archive HEAD | tar -x -C "$ROOT/root/nnscratch"
    if [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]; then
        echo "note: the checkout has uncommitted changes; they are not in the arm64 tree" \
             "(NNSCRATCH_ARM64_TREE=worktree takes them)"
    fi
fi
echo "$COMMIT: $(find "$ROOT/root/nnscratch" -type f | wc -l) files"
BUILD_ID=""
[ "$TREE" = head ] && BUILD_ID="$(git -C "$REPO" rev-parse HEAD)"
stage_done "copy tree" "$t"

# --- 4., 5. inside the chroot -------------------------------------------------------------

cat > "$ROOT/root/arm64-inside.sh" <<'INSIDE'
#!/bin/bash
# Run by tools/arm64.sh inside the arm64 chroot.
set -uo pipefail
RESULTS=/root/arm64-results
: > "$RESULTS"
status=0
put() { echo "$1=$2" >> "$RESULTS"; }
say() { printf '\n== %s\n' "$*"; }
timed() { put "time_$1" "$(( SECONDS - $2 ))"; }

say "dataset"
t=$SECONDS
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ]; then
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null \
        || echo "dataset-fashion-mnist not installed: nnscratch train uses the bundled sample"
fi
ls /usr/share/datasets/fashion-mnist/ 2>/dev/null || true
timed dataset "$t"

say "venv and pip install \".[test]\" (builds cnn_core)"
t=$SECONDS
. /etc/os-release 2>/dev/null; echo "$PRETTY_NAME; $(gcc --version | head -1); $(python3 --version)"
if [ "${REUSE:-0}" = 1 ] && [ -n "$BUILD_ID" ] &&
   [ "$(cat /root/venv/.nnscratch-build 2>/dev/null)" = "$BUILD_ID" ]; then
    echo "reusing /root/venv: nnscratch built from $BUILD_ID (NNSCRATCH_ARM64_REUSE=1)"
    . /root/venv/bin/activate
    put build "ok (reused, $BUILD_ID)"
else
    rm -rf /root/venv
    python3 -m venv /root/venv
    . /root/venv/bin/activate
    cd /root/nnscratch
    if ! pip install --progress-bar off ".[test]"; then
        put build FAILED
        timed build "$t"
        exit 1
    fi
    echo "$BUILD_ID" > /root/venv/.nnscratch-build
    put build ok
fi
pip list 2>/dev/null | grep -i -E '^(numpy|cython|pytest|hypothesis|matplotlib|pillow|nnscratch) '
timed build "$t"

say "platform"
cd /
if ! python -c "import cnn_core, nnscratch" 2>/tmp/import.err; then
    cat /tmp/import.err
    put build "FAILED at import: $(tail -1 /tmp/import.err)"
    status=1
fi
uname -m
python -c "import platform; print(platform.machine())"
put uname "$(uname -m)"
put machine "$(python -c 'import platform; print(platform.machine())')"
nnscratch info
put gemm "$(python -c 'import cnn_core, numpy as np; print("float32", cnn_core.gemm_kernel_name(np.float32) + ", float64", cnn_core.gemm_kernel_name(np.float64))')"
put cpu_features "$(python -c 'import cnn_core; f = cnn_core.cpu_features(); print(", ".join(k for k, v in f.items() if v) or "none")')"
put threads "$(python -c 'import cnn_core; print(cnn_core.get_num_threads())')"

say "NEON in the built micro-kernels (objdump -d cnn_core/_gemm*.so)"
SO="$(ls /root/venv/lib/python3*/site-packages/cnn_core/_gemm*.so | head -1)"
echo "$SO"
objdump -d "$SO" > /tmp/gemm.dis
fmla_v="$(grep -cE '\sfmla\s+v[0-9]+\.' /tmp/gemm.dis || true)"
vec="$(grep -cE '\sv[0-9]+\.(4s|2d|2s|16b|8b|8h|4h|s|d)\b' /tmp/gemm.dis || true)"
echo "fmla v (vector FMA) instructions: $fmla_v; instructions on v registers: $vec"
echo "fmla v by function (top 8):"
awk '/^[0-9a-f]+ <.*>:$/ {fn=$2} /\tfmla\tv[0-9]+\./ {n[fn]++} END {for (f in n) print n[f], f}' \
    /tmp/gemm.dis | sort -rn | head -8
for so in /root/venv/lib/python3*/site-packages/cnn_core/*.so; do
    printf '  %-40s fmla v: %s\n' "$(basename "$so")" \
        "$(objdump -d "$so" | grep -cE '\sfmla\s+v[0-9]+\.' || true)"
done
put neon_fmla_gemm "$fmla_v"
put neon_vec_gemm "$vec"

say "pytest $PYTEST_ARGS $TESTS (from /root/nnscratch: the installed package is imported)"
t=$SECONDS
cd /root/nnscratch
# (tests/conftest.py refuses to run if the uncompiled checkout's cnn_core were imported)
# shellcheck disable=SC2086
pytest $PYTEST_ARGS $TESTS 2>&1 | tee /root/pytest-arm64.log
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || status=1
put pytest_rc "$rc"
put pytest_summary "$(grep -E '[0-9]+ (passed|failed|errors?|skipped|deselected|xfailed)' /root/pytest-arm64.log | tail -1)"
put pytest_notrun "$(grep -E 'NOT RUN:' /root/pytest-arm64.log | sed 's/=//g; s/^ *//; s/ *$//' | tr '\n' ';')"
timed pytest "$t"

say "nnscratch train --epochs 1"
t=$SECONDS
cd /tmp
nnscratch train --epochs 1 --no-progress 2>&1 | tee /root/train-arm64.log
rc=${PIPESTATUS[0]}
[ "$rc" -eq 0 ] || status=1
put train_rc "$rc"
put train_data "$(grep -m1 -E '^data' /root/train-arm64.log)"
put train_result "$(grep -E '^test accuracy' /root/train-arm64.log | tail -1)"
timed train "$t"
exit $status
INSIDE

say "inside the chroot (nice -n 10)"
t=$SECONDS
rm -f "$ROOT/root/arm64-results"
inside_rc=0
nice -n 10 chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DEFAULT_TIMEOUT=180 \
    TESTS="$TESTS" PYTEST_ARGS="$PYTEST_ARGS" REUSE="${NNSCRATCH_ARM64_REUSE:-0}" \
    BUILD_ID="$BUILD_ID" \
    /bin/bash /root/arm64-inside.sh || inside_rc=$?
stage_done "inside chroot (all)" "$t"

# --- 6. summary ---------------------------------------------------------------------------

r() { sed -n "s/^$1=//p" "$ROOT/root/arm64-results" 2>/dev/null | tail -1; }
secs() { local v; v="$(r "time_$1")"; [ -n "$v" ] && echo "${v}s" || echo "-"; }
say "summary (arm64, emulated; commit $COMMIT)"
echo "uname -m / platform.machine(): $(r uname) / $(r machine)"
echo "build (pip install .[test]):   $(r build)"
echo "GEMM micro-kernels (ISA path): $(r gemm)"
echo "CPU features used:             $(r cpu_features); threads $(r threads)"
echo "NEON in _gemm*.so:             $(r neon_fmla_gemm) 'fmla v' vector FMAs, $(r neon_vec_gemm) instructions on v registers"
echo "pytest ($(echo $TESTS)):"
echo "    $(r pytest_summary) (exit $(r pytest_rc))"
[ -n "$(r pytest_notrun)" ] && echo "    $(r pytest_notrun)"
echo "nnscratch train --epochs 1:    $(r train_result) (exit $(r train_rc))"
echo "    ${DATA_FROM:+data from $DATA_FROM; }$(r train_data)"
echo "stages:"
for s in "${STAGES[@]}"; do echo "    $s"; done
echo "    inside: dataset $(secs dataset), build $(secs build), pytest $(secs pytest), train $(secs train)"
echo "    total                               $((SECONDS - START))s"
exit "$inside_rc"
