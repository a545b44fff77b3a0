"""The API reference (docs/api/, built by mkdocs + mkdocstrings: tools/docs.sh) covers the
public API, and the package says it is typed. Fast: reads the pages, builds nothing.

Every name of ``nnscratch.__all__`` is listed on docs/api/index.md and documented by a
``::: <module>`` (or ``::: nnscratch.<name>``) directive of some API page; every public
submodule has its page; mkdocs.yml's nav holds every page of docs/ (narrative and API); and
``py.typed`` is in the installed package (PEP 561), so that type checkers read its hints.
"""
import importlib
import re
import types
from pathlib import Path

import pytest

import nnscratch

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "docs" / "api"
PAGES = sorted(API.glob("*.md"))
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.M)

# the modules a user imports (nnscratch.<name>), each documented on docs/api/<name>.md
PUBLIC_MODULES = ["module", "model", "models", "layers", "conv", "norm", "losses", "optim",
                  "schedules", "callbacks", "training", "metrics", "datasets", "data",
                  "transforms", "gradcheck", "inspect", "explain", "serialization",
                  "checkpoint", "onnx", "interop", "sklearn", "backend"]


def _directives():
    return {name for page in PAGES for name in DIRECTIVE.findall(page.read_text())}


def test_every_public_module_has_its_page():
    documented = _directives()
    for name in PUBLIC_MODULES:
        page = API / f"{name}.md"
        assert page.is_file(), f"docs/api/{name}.md is missing"
        assert f"nnscratch.{name}" in DIRECTIVE.findall(page.read_text()), \
            f"docs/api/{name}.md does not document nnscratch.{name} (::: nnscratch.{name})"
        importlib.import_module(f"nnscratch.{name}")         # (a module that exists)
    assert len(documented) >= len(PUBLIC_MODULES)


@pytest.mark.parametrize("name", [n for n in nnscratch.__all__ if n != "__version__"])
def test_every_exported_name_is_documented(name):
    index = (API / "index.md").read_text()
    assert f"`nnscratch.{name}`" in index, f"docs/api/index.md does not list nnscratch.{name}"
    obj = getattr(nnscratch, name)
    documented = _directives()
    if isinstance(obj, types.ModuleType):
        assert obj.__name__ in documented, f"no API page documents {obj.__name__}"
        return
    # a directive for the object itself, or for the public module that defines it
    assert f"nnscratch.{name}" in documented or obj.__module__ in documented, \
        f"nnscratch.{name} ({obj.__module__}) is on no API page"
    assert (obj.__doc__ or "").strip(), f"nnscratch.{name} has no docstring"


def test_the_nav_holds_every_page():
    # (mkdocs build --strict says so too; this fails in the test run, without the build)
    config = (ROOT / "mkdocs.yml").read_text()
    nav = config[config.index("\nnav:"):]
    docs = ROOT / "docs"
    for page in sorted(docs.glob("*.md")) + PAGES:
        rel = page.relative_to(docs).as_posix()
        assert re.search(rf"^\s+- (?:[^\n:]+: )?{re.escape(rel)}\s*$", nav, re.M), \
            f"mkdocs.yml's nav does not list {rel}"


def test_the_package_is_marked_typed():
    # PEP 561: shipped in the wheel (setup.py's package_data) and the sdist (MANIFEST.in)
    marker = Path(nnscratch.__file__).with_name("py.typed")
    assert marker.is_file(), f"{marker} is missing: type checkers would ignore the hints"
    assert marker.read_text() == ""
