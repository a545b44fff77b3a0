"""A learner can follow one training step: the files `model(x)` and `model.backward(g)` pass
through, traced with sys.setprofile; and the package's import graph has no cycles.

On the NumPy backend the whole run is the textbook path: the layers' own forward and
backward run, no module of the fast path (nnscratch/_fast) is entered, and the Python code
visited lies in at most four files besides the NumPy twins (cnn_core/reference).
"""
import ast
import os
import sys
from pathlib import Path

import numpy as np

import cnn_core
import nnscratch as nn
from nnscratch import backend

PACKAGE = Path(nn.__file__).resolve().parent
TWINS = Path(cnn_core.__file__).resolve().parent / "reference"
FAST = PACKAGE / "_fast"


def _readme_mlp():
    """The model of README's example and hand-written loop (784-256-10)."""
    nn.seed(0)
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))


def _trace(fn):
    """(set of (file, function name)) of the Python calls made by fn()."""
    calls = set()

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            calls.add((str(Path(code.co_filename).resolve()), code.co_name))

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def _ours(calls):
    return {(f, name) for f, name in calls
            if f.startswith(str(PACKAGE)) or f.startswith(str(TWINS.parent))}


def test_one_step_on_the_numpy_backend_runs_the_textbook_layers_in_four_files():
    model = _readme_mlp()
    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    loss = nn.CrossEntropyLoss()
    with backend.using("numpy"):
        out = model(x)
        loss(out, np.arange(16) % 10)
        grad = loss.backward()
        calls = _ours(_trace(lambda: (model(x), model.backward(grad))))
    files = {f for f, _ in calls}
    layers_py = str(PACKAGE / "layers.py")
    assert (layers_py, "forward") in calls and (layers_py, "backward") in calls
    assert not any(f.startswith(str(FAST)) for f in files), sorted(files)
    outside = sorted(os.path.relpath(f, PACKAGE) for f in files
                     if not f.startswith(str(TWINS)))
    assert outside == ["backend.py", "layers.py", "model.py", "module.py"], outside
    twins = sorted(os.path.relpath(f, TWINS) for f in files if f.startswith(str(TWINS)))
    assert "linear.py" in twins and "activations.py" in twins, twins


def test_on_the_compiled_kernels_the_fast_path_runs_and_the_layers_do_not():
    model = _readme_mlp()
    x = np.random.default_rng(0).random((16, 784), dtype=np.float32)
    model(x)
    calls = _ours(_trace(lambda: (model(x), model.backward(np.ones((16, 10), np.float32)))))
    files = {f for f, _ in calls}
    assert any(f.startswith(str(FAST)) for f in files)
    assert (str(PACKAGE / "layers.py"), "forward") not in calls


def _imports(path, package):
    """The nnscratch modules `path` imports (anywhere in it, functions included; not the
    imports under ``if TYPE_CHECKING:``, which only the type checker runs)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            node.body = []
    module = ".".join(path.relative_to(package.parent).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module[:-len(".__init__")]
    current = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("nnscratch")}
        elif isinstance(node, ast.ImportFrom):
            base = current
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = (f"{base}.{node.module}" if node.module else base) if node.level \
                else (node.module or "")
            if not target.startswith("nnscratch"):
                continue
            for alias in node.names:        # `from . import models`: the submodule
                candidate = f"{target}.{alias.name}"
                sub = package.parent.joinpath(*candidate.split("."))
                found.add(candidate if sub.with_suffix(".py").exists() or sub.is_dir()
                          else target)
    return module, found


def test_the_import_graph_has_no_cycles():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        module, imported = _imports(path, PACKAGE)
        graph[module] = imported - {module}
    for module in list(graph):
        for target in graph[module]:
            graph.setdefault(target, set())
    # depth-first search for a back edge
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                raise AssertionError(" -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert "nnscratch._fast" in graph and "nnscratch.models" in graph
