"""Check what a built sdist and wheel hold (tools/package.sh runs it).

    python tools/check_dist.py DIST_DIR

The wheel holds the compiled modules (one per extension in setup.py), the Python packages,
the kernels' Cython sources, the sample data set and the licence -- never generated C, object
files or build folders. The sdist holds what a build and the test suite need (setup.py,
pyproject.toml, src/*.h, cnn_core/*.pyx, python/, tests/, LICENSE) and no build output.
Both carry the metadata pyproject.toml declares. Exits 1 with a line per problem.
"""
import ast
import email.parser
import glob
import os
import sys
import tarfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def extension_modules():
    """The module names of setup.py's EXTENSIONS table, read without running setup.py."""
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "EXTENSIONS":
            return sorted(ast.literal_eval(node.value))
    raise SystemExit("check_dist: no EXTENSIONS table in setup.py")


def check_metadata(text, where, problems):
    meta = email.parser.Parser().parsestr(text)
    for field in ("Name", "Version", "Summary", "Requires-Python", "License-Expression"):
        if not meta.get(field):
            problems.append(f"{where}: metadata has no {field}")
    if not any("Programming Language :: Python :: 3" in c for c in meta.get_all("Classifier", [])):
        problems.append(f"{where}: metadata has no Python classifiers")
    if not meta.get("Author") and not meta.get("Author-email"):
        problems.append(f"{where}: metadata names no author")
    if "LICENSE" not in " ".join(meta.get_all("License-File", [])):
        problems.append(f"{where}: metadata names no License-File")
    body = meta.get_payload() or ""
    if "# nnscratch" not in body:
        problems.append(f"{where}: the long description is not README's front page")
    return meta


def check_wheel(path, problems):
    names = zipfile.ZipFile(path).namelist()
    where = os.path.basename(path)
    for module in extension_modules():
        stem = module.replace(".", "/")
        if not any(n.startswith(stem + ".") and n.endswith(".so") for n in names):
            problems.append(f"{where}: no compiled module for {module}")
    for required in ("nnscratch/__init__.py", "nnscratch/_fast/__init__.py",
                     "nnscratch/cli.py", "cnn_core/__init__.py", "cnn_core/reference/__init__.py",
                     "cnn_core/_gemm.pyx", "nnscratch/py.typed"):
        if required not in names:
            problems.append(f"{where}: missing {required}")
    if not any(n.startswith("nnscratch/data/") and n.endswith(".npz") for n in names):
        problems.append(f"{where}: the sample data set is missing")
    bad = [n for n in names if n.endswith((".c", ".o")) or n.startswith(("build/", "src/", "tests/"))]
    if bad:
        problems.append(f"{where}: holds build files or sources it should not: {bad[:5]}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append(f"{where}: no LICENSE in .dist-info/licenses/")
    meta_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
    check_metadata(zipfile.ZipFile(path).read(meta_name).decode(), where, problems)
    return len(names)


def check_sdist(path, problems):
    with tarfile.open(path) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
        pkg_info = tar.extractfile(next(m for m in tar.getmembers()
                                        if m.name.count("/") == 1 and m.name.endswith("/PKG-INFO")))
        check_metadata(pkg_info.read().decode(), os.path.basename(path), problems)
    where = os.path.basename(path)
    for required in ("setup.py", "pyproject.toml", "LICENSE", "README.md", "MANIFEST.in",
                     "src/nn_team.h", "src/nn_gemm_ukernel.h", "cnn_core/_gemm.pyx",
                     "cnn_core/_gemm.pxd", "python/nnscratch/__init__.py", "tests/conftest.py",
                     "tests/library/plain_c_check.c",
                     "docs/design.md"):
        if required not in names:
            problems.append(f"{where}: missing {required}")
    for module, source in ((m, m.replace(".", "/") + ".pyx") for m in extension_modules()):
        if source not in names:
            problems.append(f"{where}: missing {source} (the source of {module})")
    if not any(n.startswith("python/nnscratch/data/") and n.endswith(".npz") for n in names):
        problems.append(f"{where}: the sample data set is missing")
    # (generated C is build output; tests/ holds one hand-written C file, a test's program)
    bad = [n for n in names if n.endswith((".so", ".o", ".pyc")) or n.startswith("build/")
           or "/build/" in n or (n.endswith(".c") and not n.startswith("tests/"))]
    if bad:
        problems.append(f"{where}: holds build output: {bad[:5]}")
    return len(names)


def main(dist):
    problems = []
    wheels = glob.glob(os.path.join(dist, "*.whl"))
    sdists = glob.glob(os.path.join(dist, "*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        raise SystemExit(f"check_dist: want one wheel and one sdist in {dist}, "
                         f"found {wheels + sdists}")
    for path, check in ((wheels[0], check_wheel), (sdists[0], check_sdist)):
        count = check(path, problems)
        print(f"   {os.path.basename(path)}: {count} files, "
              f"{os.path.getsize(path) / 1e6:.2f} MB")
    for problem in problems:
        print("check_dist:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/check_dist.py DIST_DIR")
    sys.exit(main(sys.argv[1]))
