"""The layering rules of the design, checked with import-linter's contracts in setup.cfg."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([lint, "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout


def test_contracts_catch_a_violation(tmp_path):
    """A Qt import in mlx_model must break the contract (the check is not vacuous)."""
    copy = tmp_path / "repo"
    for package in ("mlx_model", "convert", "ui", "gemma4_mac"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    (copy / "mlx_model" / "bad_qt.py").write_text("import PySide6.QtCore\n")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    result = subprocess.run([lint, "--config", str(copy / "setup.cfg")], cwd=copy, capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0
    assert "mlx_model.bad_qt -> PySide6" in result.stdout
