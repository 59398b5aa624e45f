"""The layering rules of the design, checked with import-linter's contracts in setup.cfg."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert lint, "import-linter is a test dependency: pip install -e '.[test]'"
    result = subprocess.run([lint, "--config", str(ROOT / "setup.cfg")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 6 kept, 0 broken" in result.stdout


@pytest.mark.parametrize("bad_file, source, expected", [
    ("mlx_model/bad_qt.py", "import PySide6.QtCore\n", "mlx_model.bad_qt -> PySide6"),
    ("gemma4_mac/bad_qt.py", "import PySide6.QtCore\n", "gemma4_mac.bad_qt -> PySide6"),
    ("gemma4_mac/bad_window.py", "import ui.engine\n", "gemma4_mac.bad_window -> ui.engine"),
    ("gemma4_mac/bad_server.py", "import gemma4_mac.server.control\n", "gemma4_mac.bad_server -> gemma4_mac.server"),
    ("gemma4_mac/bad_cycle.py", "from . import hotkey_backends\n", "No cycles are allowed in gemma4_mac"),
])
def test_contracts_catch_a_violation(tmp_path, bad_file, source, expected):
    """Each contract breaks on the import it forbids (the checks are not vacuous)."""
    copy = tmp_path / "repo"
    for package in ("mlx_model", "convert", "ui", "gemma4_mac"):
        shutil.copytree(ROOT / package, copy / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    (copy / bad_file).write_text(source)
    if "cycle" in bad_file:  # close the circle: hotkey_backends imports the new module
        with open(copy / "gemma4_mac" / "hotkey_backends.py", "a") as handle:
            handle.write("from . import bad_cycle  # noqa\n")
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    result = subprocess.run([lint, "--config", str(copy / "setup.cfg")], cwd=copy, capture_output=True, text=True,
                            env={"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0
    assert expected in result.stdout, result.stdout
