"""The configuration reference cannot drift: docs/configuration.md is what berth/settings.py
generates, and every BERTH_* variable the code reads is defined there."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from berth.settings import GROUPS, REFERENCE_COMMAND, SETTINGS, read_setting, reference
from deploy.cli import cli

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"
# Where Berth's programs read their environment: the packages, nginx's templates, the deploy
# scripts and the image's files.
READERS = ("berth", "webapp", "auth_service", "nginx", "deploy/*.py", "deploy/entrypoint.sh",
           "Dockerfile", "docker-compose.yml")
NOT_SETTINGS = {
    # Berth sets it in a tool process's environment, to find the process again; nothing reads
    # it from Berth's own environment.
    "BERTH_INSTANCE_ID",
    # Berth tells a tool where its team folders are; nothing reads it from Berth's own environment.
    "BERTH_TEAM_FOLDERS",
    # The shell variable the API reference's curl examples take a token from (webapp/api/docs.py).
    "BERTH_TOKEN",
}
VARIABLE = re.compile(r"(?<![A-Za-z0-9_])BERTH_[A-Z0-9_]*[A-Z0-9]")


def _readers():
    for pattern in READERS:
        for path in sorted(ROOT.glob(pattern)):
            yield from ([path] if path.is_file() else
                        (p for p in sorted(path.rglob("*")) if p.is_file() and "__pycache__" not in p.parts))


def test_the_configuration_reference_is_up_to_date():
    assert REFERENCE.read_text(encoding="utf-8") == reference(), \
        f"docs/configuration.md is out of date: run `{REFERENCE_COMMAND}`"


def test_every_berth_variable_read_anywhere_is_a_defined_setting():
    defined = {setting.name for setting in SETTINGS}
    undefined = {}
    for path in _readers():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images and fonts
        for name in VARIABLE.findall(text):
            if name not in defined and name not in NOT_SETTINGS and not name.startswith("BERTH_TEST_"):
                undefined.setdefault(name, path.relative_to(ROOT).as_posix())
    assert not undefined, ("read but not defined in berth/settings.py (SETTINGS), so missing from "
                           f"docs/configuration.md: {undefined}")


def test_each_setting_is_defined_once_in_a_listed_group_with_its_doc():
    names = [setting.name for setting in SETTINGS]
    assert len(names) == len(set(names))
    for setting in SETTINGS:
        assert setting.name.startswith("BERTH_"), setting.name
        assert setting.group in GROUPS, setting.name
        assert setting.doc.endswith(".") and "\n" not in setting.doc, setting.name
    assert {setting.group for setting in SETTINGS} == set(GROUPS)


def test_every_default_is_a_value_its_own_setting_accepts(tmp_path):
    for setting in SETTINGS:
        read_setting(setting.name, {"BERTH_DATA_DIR": str(tmp_path)})


def test_berth_settings_doc_and_python_m_berth_settings_print_the_reference():
    result = CliRunner().invoke(cli, ["settings-doc"], env={"BERTH_HTTP_PORT": "not a port"})
    assert result.exit_code == 0, result.output  # the reference needs no valid settings
    assert result.output == reference()
    module = subprocess.run([sys.executable, "-m", "berth.settings"], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert module.returncode == 0, module.stderr
    assert module.stdout == reference()


@pytest.mark.parametrize("group", GROUPS)
def test_the_reference_has_a_table_per_group(group):
    section = reference().split(f"\n## {group}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `BERTH_")]
    assert len(rows) == sum(setting.group == group for setting in SETTINGS)
