"""The structure cannot drift: the import contracts in setup.cfg ([importlinter]) hold.

The front doors (webapp, auth_service) depend on the core (berth) and never on each other;
the launch path runs one way; no package has an import cycle between its modules.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


PACKAGES = ("berth", "webapp", "auth_service", "deploy", "berth_tools")


def _lint_imports(tree):
    """Run import-linter on the packages in tree, with setup.cfg's contracts."""
    return subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                               "sys.argv = ['lint-imports', 'setup.cfg']; lint_imports_command()"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=120,
    )


def test_import_contracts_are_kept():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_core_importing_a_front_door_breaks_the_contracts(tmp_path):
    """The contracts can fail: in a copy of the tree, make the core import the web app."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    with open(tmp_path / "berth" / "models.py", "a") as module:
        module.write("\nimport webapp.identity  # the core reaching up into a front door\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert "The two front doors depend on the core and never on each other BROKEN" in result.stdout
