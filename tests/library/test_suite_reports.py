"""The suite itself: tests that need an optional package which is missing are reported at
the end as not run (tests/conftest.py), never passed over in silence."""
import os
import subprocess
import sys
import textwrap

import pytest

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_comparisons(tmp_path, hide_torch):
    """pytest's output for the optimizer comparisons with torch.optim, run in a child
    interpreter -- with torch hidden (None in sys.modules: its import fails) if asked."""
    script = textwrap.dedent(f"""
        import sys
        if {hide_torch!r}:
            sys.modules["torch"] = None
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", {TESTS!r},
                              {os.path.join(TESTS, "library", "test_optimizers.py")!r},
                              "-k", "torch"]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_tests_without_torch_are_listed_as_not_run(tmp_path):
    # collected, skipped, and listed under a NOT RUN banner with the command that installs it
    lines = torch_comparisons(tmp_path, hide_torch=True).splitlines()
    banner = [i for i, line in enumerate(lines) if "NOT RUN:" in line]
    assert len(banner) == 1, lines
    assert "tests (or files) need torch" in lines[banner[0]]
    assert "pip install torch" in lines[banner[0] + 1]
    assert any("test_steps_equal_torch_optim" in line for line in lines[banner[0] + 2:])


def test_no_banner_when_every_test_ran(tmp_path):
    pytest.importorskip("torch")        # without it, this test is itself listed as not run
    out = torch_comparisons(tmp_path, hide_torch=False)
    assert "NOT RUN" not in out
    assert " passed" in out and "skipped" not in out
