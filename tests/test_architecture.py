"""The package's structure: layers import only downward, no cycles, ONNX Runtime only in the
runtime package, op rules policy-free, small modules. Checked twice: by our own walk over every
import statement (tests/archcheck.py, function-local imports included) and by import-linter's
contracts in pyproject.toml."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import archcheck

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "graphprune"


def test_the_package_follows_its_import_rules():
    assert archcheck.violations(PACKAGE) == []


@pytest.fixture
def copy_of_package(tmp_path):
    dst = tmp_path / "graphprune"
    shutil.copytree(PACKAGE, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_an_upward_import_is_caught(copy_of_package):
    """An op rule reaching up into the pipeline, even inside a function (the usual way to dodge
    an import cycle), breaks the layering."""
    _append(copy_of_package / "ops" / "conv.py",
            "def _shortcut():\n    from ..pipeline.pipeline import prune\n    return prune")
    found = archcheck.violations(copy_of_package)
    assert any("graphprune.ops.conv imports graphprune.pipeline.pipeline, which is not below it"
               in v for v in found), found


def test_an_import_cycle_is_caught(copy_of_package):
    """The analysis importing a stage that imports the analysis: a cycle, and upward."""
    _append(copy_of_package / "analysis" / "units.py",
            "def _shortcut():\n    from ..pipeline import stages\n    return stages")
    found = archcheck.violations(copy_of_package)
    cycles = [v for v in found if v.startswith("import cycle:")]
    assert any("graphprune.analysis.units" in c and "graphprune.pipeline.stages" in c
               for c in cycles), found


def test_onnxruntime_outside_the_runtime_package_is_caught(copy_of_package):
    _append(copy_of_package / "criteria" / "magnitude.py", "import onnxruntime  # noqa")
    found = archcheck.violations(copy_of_package)
    assert any("graphprune.criteria.magnitude imports onnxruntime" in v for v in found), found


def test_a_criterion_calling_the_runtime_is_caught(copy_of_package):
    """Criteria get a runner from the pipeline; importing the runtime package is refused."""
    _append(copy_of_package / "criteria" / "activation.py",
            "from ..runtime import session  # noqa")
    found = archcheck.violations(copy_of_package)
    assert any("only stages run ONNX Runtime" in v for v in found), found


def test_siblings_do_not_import_each_other(copy_of_package):
    _append(copy_of_package / "criteria" / "magnitude.py",
            "from ..transforms import select  # noqa")
    found = archcheck.violations(copy_of_package)
    assert any("graphprune.criteria.magnitude imports graphprune.transforms.select" in v
               for v in found), found


def test_import_linter_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint is None:
        pytest.skip("import-linter is not installed (pip install import-linter)")
    r = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_op_rules_never_read_options():
    """Op rules state facts; the analysis' policy decides. No rule reads the dependency graph's
    policy or the options, and no rule message names a command-line flag."""
    pattern = re.compile(r"ctx\.dg|\.policy|\boptions\b|[\"'][^\"']*--[a-z]")
    for f in (PACKAGE / "ops").glob("*.py"):
        code = [ln for ln in f.read_text().splitlines() if not ln.lstrip().startswith("#")]
        bad = [ln.strip() for ln in code if pattern.search(ln)]
        assert not bad, f"{f.name}: {bad[:3]}"


def test_no_module_over_500_lines():
    long = {str(f.relative_to(ROOT)): n for f in PACKAGE.rglob("*.py")
            if (n := len(f.read_text().splitlines())) > 500}
    assert not long, long
