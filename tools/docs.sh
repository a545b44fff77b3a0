#!/usr/bin/env bash
# The typed API and its reference: mypy over python/nnscratch (pyproject.toml's [tool.mypy]:
# zero errors), then the documentation site -- docs/ as the narrative part, docs/api/ the API
# reference from the numpydoc docstrings (mkdocs + mkdocstrings, mkdocs.yml) -- built with
# --strict: any warning fails it (a docstring griffe cannot parse, a broken link, a missing
# #anchor, a page left out of the nav, an unresolved cross-reference).
#
#   tools/docs.sh [PYTHON]         # PYTHON: makes the venv (default python3)
#
# Neither step imports nnscratch (mypy and griffe read the sources), so nothing is compiled:
# a fresh venv of PYTHON gets the tools of pyproject.toml's "docs" extra and numpy (whose
# stubs mypy checks against), not the package itself. The site is built into a temporary
# folder and thrown away; NNSCRATCH_SITE=DIR keeps it in DIR instead. Exits non-zero if
# either step fails. Takes about half a minute after the install.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$(command -v "${1:-${PYTHON:-python3}}" || true)"
[ -n "$PY" ] || { echo "docs: no python interpreter '${1:-${PYTHON:-python3}}'" >&2; exit 2; }
export PIP_DISABLE_PIP_VERSION_CHECK=1

WORK="$(mktemp -d "${TMPDIR:-/tmp}/nnscratch-docs.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# the "docs" extra's requirements, read from pyproject.toml (the extra, not the package)
mapfile -t REQUIREMENTS < <("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^docs\s*=\s*\[(.*?)\]", text, re.S | re.M)
if not block:
    sys.exit("docs: pyproject.toml has no 'docs' extra")
for requirement in re.findall(r'"([^"]+)"', block.group(1)):
    print(requirement)
EOF
)
echo "== docs: a venv with ${REQUIREMENTS[*]} numpy"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q "${REQUIREMENTS[@]}" numpy

status=0
cd "$ROOT"
echo "== mypy (pyproject.toml [tool.mypy]: python/nnscratch)"
start=$SECONDS
"$WORK/venv/bin/python" -m mypy || status=$?
echo "   mypy: $((SECONDS - start)) s"

echo "== mkdocs build --strict (mkdocs.yml: docs/ and the API reference)"
start=$SECONDS
SITE="${NNSCRATCH_SITE:-$WORK/site}"
"$WORK/venv/bin/python" -m mkdocs build --strict --site-dir "$SITE" || status=$?
echo "   mkdocs: $((SECONDS - start)) s, $(find "$SITE" -name '*.html' 2>/dev/null | wc -l) pages"
exit $status
