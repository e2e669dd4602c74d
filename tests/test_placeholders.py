"""Placeholders in a template's command and environment: one set, filled by one function on every
backend (berth/backends/placeholders.py), and a placeholder no backend fills is refused when the
catalogue is loaded rather than at launch."""
import sys
from types import SimpleNamespace

import pytest

from berth.backends import LaunchFailed
from berth.backends.placeholders import fill
from berth.catalogue import CatalogueError, parse_catalogue


def _instance(backend, command, env=None):
    return SimpleNamespace(backend=backend, template=SimpleNamespace(backend=backend, command=command, env=env or {}))


def _entry(backend, command, env=None):
    entry = {"slug": "lab", "name": "Lab", "backend": backend, "command": command, "env": env or {}}
    if backend != "process":
        entry["image"] = "lab:1"
    return {"tools": [entry]}


def test_the_process_backend_fills_port_python_and_home_in_command_and_environment():
    instance = _instance("process", ["{python}", "-m", "lab", "--port={port}", "--root={home}/work"],
                         {"LISTEN": "{port}", "DATA": "{home}", "COUNT": "3"})

    command, env = fill(instance, 21001, "/data/home/ab12/lab")

    assert command == [sys.executable, "-m", "lab", "--port=21001", "--root=/data/home/ab12/lab/work"]
    assert env == {"LISTEN": "21001", "DATA": "/data/home/ab12/lab", "COUNT": "3"}


@pytest.mark.parametrize("backend", ["docker", "ecs"])
def test_containers_get_port_filled_the_same_way(backend):
    command, env = fill(_instance(backend, ["serve", "--port", "{port}"], {"LISTEN": ":{port}"}), 8888)
    assert (command, env) == (["serve", "--port", "8888"], {"LISTEN": ":8888"})


def test_braces_that_are_no_placeholder_are_left_alone():
    texts = ['{"debug": true}', "--format={{.ID}}", "echo ${home} ${PORT}", "{Port}", "{}"]
    command, _ = fill(_instance("process", texts), 21001, "/home")
    assert command == texts


@pytest.mark.parametrize("backend, command, env, field, message", [
    ("process", ["lab", "--user={user}"], {}, "command",
     "command[2]: {user} is not a placeholder Berth fills (it fills {port}, {ip}, {python}, {home})"),
    ("process", ["lab"], {"WHERE": "{hostname}"}, "env",
     "env.WHERE: {hostname} is not a placeholder Berth fills (it fills {port}, {ip}, {python}, {home})"),
    ("docker", ["{python}", "-m", "lab"], {}, "command", "command[1]: {python} is filled only on the process backend"),
    ("ecs", ["lab"], {"ROOT": "{home}"}, "env", "env.ROOT: {home} is filled only on the process and docker backends"),
])
def test_a_placeholder_the_backend_does_not_fill_is_refused_at_catalogue_load(backend, command, env, field, message):
    import yaml

    with pytest.raises(CatalogueError) as error:
        parse_catalogue(yaml.safe_dump(_entry(backend, command, env)))

    assert str(error.value) == f"entry 1 (lab): {message}"
    assert error.value.field == field


def test_a_stored_template_with_an_unfilled_placeholder_fails_its_launch_with_the_reason():
    with pytest.raises(LaunchFailed, match=r"^The template's command cannot be filled in: "
                                           r"\{python\} is filled only on the process backend\.$"):
        fill(_instance("docker", ["{python}", "app.py"]), 8888)
