"""tests/conftest.py under CI: a test that skips because a dependency declared in the `test`
extra cannot be imported fails; other skips stay skips, and every skip's reason is listed.

Each case runs pytest in a subprocess on a small project: a copy of tests/conftest.py and a
pyproject.toml whose `test` extra names pytest (installed) and whatever the case needs.
"""
import os
import shutil
import subprocess
import sys

import pytest

CONFTEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conftest.py")

# pytest.nonexistent is provided by no distribution but pytest's name: a declared dependency
# whose import fails; not_a_declared_module is declared by nobody (as torch in this suite).
TESTS = '''
import pytest

def test_declared_import_fails():
    pytest.importorskip("pytest.nonexistent")

def test_undeclared_import_fails():
    pytest.importorskip("not_a_declared_module")

def test_plain_skip():
    pytest.skip("no reason to run")
'''
MODULE_LEVEL = '''
import pytest
pytest.importorskip("pytest.nonexistent")

def test_never_runs():
    pass
'''


def run_pytest(tmp_path, declared, ci, files):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    requirements = ", ".join(f'"{name}"' for name in declared)
    (tmp_path / "pyproject.toml").write_text(
        f'[project]\nname = "demo"\nversion = "0"\n'
        f'[project.optional-dependencies]\ntest = [{requirements}]\n'
        f'[tool.pytest.ini_options]\naddopts = "-rfEsxX"\n')
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    env = {key: value for key, value in os.environ.items() if key != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_under_ci_a_missing_declared_dependency_fails_and_other_skips_stay(tmp_path):
    result = run_pytest(tmp_path, ["pytest>=7"], ci=True, files={"test_demo.py": TESTS})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 2 skipped" in result.stdout
    assert "FAILED test_demo.py::test_declared_import_fails" in result.stdout
    assert "pytest is a declared test dependency" in result.stdout
    # skip reasons are listed
    assert "could not import 'not_a_declared_module'" in result.stdout
    assert "no reason to run" in result.stdout


def test_without_ci_they_are_skips_with_reasons(tmp_path):
    result = run_pytest(tmp_path, ["pytest>=7"], ci=False, files={"test_demo.py": TESTS})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 skipped" in result.stdout
    assert "could not import 'pytest.nonexistent'" in result.stdout


def test_under_ci_a_module_that_skips_at_import_fails(tmp_path):
    result = run_pytest(tmp_path, ["pytest"], ci=True, files={"test_module.py": MODULE_LEVEL})
    assert result.returncode != 0, result.stdout + result.stderr
    assert "pytest is a declared test dependency" in result.stdout
    assert "skipped" not in result.stdout.splitlines()[-1]


def test_under_ci_an_uninstalled_declared_distribution_stops_the_run(tmp_path):
    """Named at once, before any test runs (the import name of a distribution that is not
    installed cannot be known, e.g. scikit-learn's sklearn)."""
    result = run_pytest(tmp_path, ["pytest", "no-such-distribution-fastbp[extra]>=1"], ci=True,
                        files={"test_demo.py": "def test_passes():\n    pass\n"})
    assert result.returncode == 4, result.stdout + result.stderr     # usage error
    assert "no-such-distribution-fastbp are not installed" in result.stderr


@pytest.mark.parametrize("name", ["jax", "jaxlib", "optax", "hypothesis", "scikit-learn"])
def test_the_oracle_and_the_other_tools_are_declared(name):
    """What the suite relies on is in the `test` extra (read as the hook reads it)."""
    import conftest
    rootpath = os.path.dirname(os.path.dirname(CONFTEST))
    if not os.path.exists(os.path.join(rootpath, "pyproject.toml")):
        pytest.skip("not a source checkout")
    assert name in conftest._declared_test_distributions(rootpath)
