"""The pages of docs/ name real things: every relative link points to a file that exists,
every dotted name `cnn_core....` / `nnscratch....` resolves to an object, every
`file.pyx: name` / `file.h: name` names a function (or constant) defined in that file, and
every Python code block compiles.
"""
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOTTED = re.compile(r"`((?:cnn_core|nnscratch)(?:\.[A-Za-z_]\w*)+)[`(\[]")
SOURCE_REF = re.compile(r"`([\w./-]+\.(?:pyx|h)): (\w+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)

SEED_PAGES = ["01-parameters.md", "02-layers.md", "03-forward-propagation.md",
              "04-activations.md", "05-losses.md", "06-backpropagation.md",
              "07-learning-rate.md", "08-training-loop.md"]


def _ids(pages):
    return [p.name for p in pages]


def test_one_page_per_concept_and_an_index():
    names = {p.name for p in PAGES}
    assert "README.md" in names
    assert set(SEED_PAGES) <= names
    index = (DOCS / "README.md").read_text()
    for name in names - {"README.md"}:
        assert f"({name})" in index, f"docs/README.md does not link {name}"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_exist(page):
    text = page.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue                                   # http:, mailto:, in-page anchors
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.name}: link to {target} ({path}) does not exist"


def _resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)                   # AttributeError: a name that is not there
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_dotted_names_exist(page):
    names = set(DOTTED.findall(page.read_text()))
    for name in sorted(names):
        try:
            _resolve(name)
        except (ImportError, AttributeError) as exc:
            pytest.fail(f"{page.name}: `{name}` does not exist ({exc!r})")


def _defines(path, name):
    text = path.read_text()
    if path.suffix == ".pyx":
        patterns = [rf"^\s*(?:def|cdef|cpdef)\b[^\n(]*\b{name}\s*\(",   # a function
                    rf"^\s+{name}\s*=",                                  # an enum constant
                    rf"^cdef\s+(?:struct|enum)\s+{name}\b"]
    else:
        patterns = [rf"^#define\s+{name}\b", rf"^[^\n;]*\b{name}\s*\([^;]*\)\s*\{{",
                    rf"\b{name}\s*="]
    return any(re.search(p, text, re.M) for p in patterns)


def _source(ref):
    for base in (ROOT, ROOT / "cnn_core", ROOT / "src"):
        if (base / ref).is_file():
            return base / ref
    return None


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_source_references_exist(page):
    for ref, name in sorted(set(SOURCE_REF.findall(page.read_text()))):
        path = _source(ref)
        assert path is not None, f"{page.name}: `{ref}: {name}`: no file {ref}"
        assert _defines(path, name), f"{page.name}: {ref} defines no `{name}`"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_python_blocks_compile(page):
    for language, code in FENCE.findall(page.read_text()):
        if language == "python":
            compile(code, f"{page.name} code block", "exec")


def test_seed_pages_name_a_twin_and_a_kernel():
    # the issue's promise: each concept page links the exact NumPy twin and Cython kernel
    for name in SEED_PAGES:
        text = (DOCS / name).read_text()
        assert re.search(r"`cnn_core\.reference\.\w+`", text), f"{name}: no NumPy twin named"
        assert SOURCE_REF.search(text), f"{name}: no `file.pyx: function` named"
        assert re.search(r"\(\.\./cnn_core/reference/\w+\.py\)", text), \
            f"{name}: no link to the twins' file"
        assert re.search(r"\(\.\./cnn_core/_\w+\.pyx\)", text), \
            f"{name}: no link to a kernel file"


README = ROOT / "README.md"


def test_readme_links_and_names_exist():
    text = README.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md: link to {target}"
    for name in sorted(set(DOTTED.findall(text))):
        _resolve(name)


def test_ci_runs_readmes_two_commands_verbatim():
    # README's first two shell blocks (install and train; run the tests) are what a new user
    # types: .ci/run runs each of them, character for character
    blocks = [code.strip() for language, code in FENCE.findall(README.read_text())
              if language == "bash"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert len(blocks) >= 2
    first, second = blocks[0], blocks[1]
    assert first.count("\n") == 0 and second.count("\n") == 0, (first, second)
    assert f"bash -c '{first}'" in ci, first
    assert any(line.strip().startswith(f"{second} ||") for line in ci.splitlines()), second


def test_readme_python_runs(tmp_path):
    # the example and the hand-written loop, one after the other, as a reader would paste them
    import subprocess
    import sys

    blocks = [code for language, code in FENCE.findall(README.read_text()) if language == "python"]
    assert len(blocks) == 2
    script = tmp_path / "readme.py"
    script.write_text("\n".join(blocks) + "\nprint('loss', loss)\n")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "'accuracy'" in proc.stdout and "loss " in proc.stdout


def test_checker_catches_a_wrong_name(tmp_path):
    # the checks above are not vacuous
    with pytest.raises(AttributeError):
        _resolve("cnn_core.reference.relu_forwardd")
    assert not _defines(ROOT / "cnn_core" / "_gemm.pyx", "pack_a_kcxmc")
    assert _defines(ROOT / "cnn_core" / "_gemm.pyx", "pack_a_mcxkc")
    assert _defines(ROOT / "src" / "nn_gemm_ukernel.h", "NN_DEFINE_UKERNEL")
    assert _defines(ROOT / "src" / "nn_gemm_ukernel.h", "nn_sgemm_kernel_for")


def test_every_test_the_guarantees_name_exists():
    """docs/guarantees.md's "Proved by" column: each `tests/...py::name` (and each `::name`
    after it, in the same file) is a test defined in that file; each script exists."""
    text = (DOCS / "guarantees.md").read_text()
    named = 0
    for row in text.splitlines():
        if not row.startswith("| ") or row.count("|") < 4:
            continue
        proof = row.rstrip(" |").rsplit(" | ", 1)[-1]
        current = None
        for token in re.findall(r"(tests/[\w/]+\.py)|::(\w+)|`(tools/[\w./]+)`", proof):
            path, test, script = token
            if path:
                current = ROOT / path
                assert current.is_file(), (row[:60], path)
            elif script:
                assert (ROOT / script).is_file(), script
            else:
                assert current is not None, (row[:60], test)
                source = current.read_text()
                assert re.search(rf"^(?:    )?def {test}\(", source, re.M), (current.name, test)
                named += 1
    assert named > 150, named
