"""The YAML catalogue: every entry is checked before anything is written (berth/catalogue.py)."""
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from webapp import create_app
from berth.catalogue import CatalogueError, load_catalogue, parse_catalogue
from berth.extensions import db
from berth.models import Event, ToolTemplate

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOGUE = ROOT / "deploy" / "demo-catalogue.yml"
TEST_CATALOGUE = ROOT / "tests" / "catalogue.yml"

GOOD = """
tools:
  - slug: echo
    name: Echo
    command: ["{python}", "-m", "berth_tools.echo", "--port", "{port}"]
  - slug: notes
    name: Notes
    command: ["notes", "--port={port}"]
"""


@pytest.fixture
def app(tmp_path):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/t.db", "TESTING": True})
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


def templates():
    return {t.slug: t for t in db.session.execute(select(ToolTemplate)).scalars()}


def count(model):
    return db.session.execute(select(func.count()).select_from(model)).scalar_one()


def entry(**fields):
    """One catalogue document with a valid entry 'good' first and the given entry second."""
    import yaml

    second = {"slug": "second", "name": "Second", "command": ["run"], **fields}
    second = {k: v for k, v in second.items() if v is not DROP}
    return yaml.safe_dump({"tools": [{"slug": "good", "name": "Good", "command": ["ok"]}, second]})


DROP = object()


# -- accepted documents -----------------------------------------------------------------

def test_parse_catalogue_accepts_the_demo_catalogue():
    tools = parse_catalogue(DEMO_CATALOGUE.read_text())
    assert [t["slug"] for t in tools] == ["echo", "team-echo", "jupyterlab", "broken"]
    assert tools[1]["shared"] and tools[1]["identity_headers"]
    jupyter = tools[2]
    assert jupyter["backend"] == "process"
    assert jupyter["health_path"] == "/api/status"
    assert jupyter["spawn_timeout"] == 120
    assert jupyter["idle_timeout"] == 7200
    assert "--port={port}" in jupyter["command"]


def test_parse_catalogue_accepts_the_test_catalogue():
    tools = parse_catalogue(TEST_CATALOGUE.read_text())
    assert [t["slug"] for t in tools] == ["echo", "broken", "silent", "missing", "busybox", "echo-docker", "ghost",
                                          "echo-api", "echo-team", "board", "fenced", "slow", "deaf", "scratch",
                                          "scratch-docker"]
    assert [t["slug"] for t in tools if not t["home"]] == ["scratch", "scratch-docker"]
    assert [t["slug"] for t in tools if t["allow_api_tokens"]] == ["echo-api"]
    assert tools[2]["spawn_timeout"] == 2


def test_parse_catalogue_fills_in_defaults():
    [tool] = parse_catalogue("- slug: a\n  name: A\n  command: [x]\n")
    assert tool == {
        "slug": "a", "name": "A", "description": "", "backend": "process", "command": ["x"],
        "image": None, "port": None, "env": {}, "health_path": "/", "spawn_timeout": 60,
        "idle_timeout": 3600, "enabled": True, "sizes": [], "allow_api_tokens": False,
        "shared": False, "identity_headers": False, "egress": False, "home": True, "ip_allowlist": [], "groups": [],
    }


def test_parse_catalogue_reads_access_fields():
    [tool] = parse_catalogue("- {slug: a, name: A, command: [x], shared: true, identity_headers: true,\n"
                             "   groups: [finance, analysts, finance], ip_allowlist: [10.0.0.0/8, '::1']}\n")
    assert tool["shared"] and tool["identity_headers"]
    assert tool["groups"] == ["analysts", "finance"]
    assert tool["ip_allowlist"] == ["10.0.0.0/8", "::1/128"]


@pytest.mark.parametrize("entry, message", [
    ("{slug: a, name: A, command: [x], shared: yes-please}", "shared must be true or false"),
    ("{slug: a, name: A, command: [x], groups: finance}", "groups must be a list"),
    ("{slug: a, name: A, command: [x], ip_allowlist: [10.0.0.1/8]}", "did you mean 10.0.0.0/8"),
    ("{slug: a, name: A, command: [x], ip_allowlist: [nowhere]}", "ip_allowlist[1] 'nowhere'"),
    ("{slug: team-0a1b2c3d, name: A, command: [x]}", "8 hexadecimal"),
])
def test_parse_catalogue_refuses_bad_access_fields(entry, message):
    with pytest.raises(CatalogueError) as caught:
        parse_catalogue(f"- {entry}\n")
    assert message in str(caught.value)


def test_parse_catalogue_turns_env_numbers_into_strings():
    [tool] = parse_catalogue("- {slug: a, name: A, command: [x], env: {N: 3, F: 1.5, S: s}}")
    assert tool["env"] == {"N": "3", "F": "1.5", "S": "s"}


def test_parse_catalogue_accepts_an_empty_list():
    assert parse_catalogue("tools: []") == []


# -- refused documents: the message names the entry and the field ------------------------

@pytest.mark.parametrize("fields, words", [
    ({"slug": DROP}, "slug must be a non-empty string"),
    ({"slug": ""}, "slug must be a non-empty string"),
    ({"slug": 12}, "slug must be a non-empty string"),
    ({"name": DROP}, "name must be a non-empty string"),
    ({"name": ["a"]}, "name must be a non-empty string"),
    ({"description": 5}, "description must be a string"),
    ({"command": "run --port 1"}, "command must be a list of strings"),
    ({"command": ["run", 1]}, "command must be a list of strings"),
    ({"command": DROP}, "command is required for the process backend"),
    ({"command": []}, "command is required for the process backend"),
    ({"backend": "kubernetes"}, "backend must be one of: process"),
    ({"env": ["A=1"]}, "env must map names to strings or numbers"),
    ({"env": {"A": True}}, "env must map names to strings or numbers"),
    ({"env": {"A": None}}, "env must map names to strings or numbers"),
    ({"env": {"A": ["x"]}}, "env must map names to strings or numbers"),
    ({"env": {1: "x"}}, "env must map names to strings or numbers"),
    ({"port": "8888"}, "port must be a whole number"),
    ({"port": 8888.0}, "port must be a whole number"),
    ({"port": True}, "port must be a whole number"),
    ({"port": 0}, "port must be between 1 and 65535"),
    ({"port": 70000}, "port must be between 1 and 65535"),
    ({"spawn_timeout": "60"}, "spawn_timeout must be a whole number"),
    ({"spawn_timeout": 1.5}, "spawn_timeout must be a whole number"),
    ({"spawn_timeout": 0}, "spawn_timeout must be between 1 and 3600"),
    ({"spawn_timeout": 3601}, "spawn_timeout must be between 1 and 3600"),
    ({"idle_timeout": -1}, "idle_timeout must be between 0 and"),
    ({"idle_timeout": False}, "idle_timeout must be a whole number"),
    ({"enabled": "yes"}, "enabled must be true or false"),
    ({"enabled": 1}, "enabled must be true or false"),
    ({"health_path": "status"}, "health_path must start with /"),
    ({"health_path": 3}, "health_path must be a non-empty string"),
    ({"image": 3}, "image must be a string"),
])
def test_parse_catalogue_names_the_entry_and_the_field(fields, words):
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(entry(**fields))
    message = str(error.value)
    assert message.startswith("entry 2"), message
    if "slug" not in fields:
        assert message.startswith("entry 2 (second): "), message
    assert words in message


@pytest.mark.parametrize("slug", ["Echo", "1echo", "echo_lab", "echo--lab", "echo-", "-echo", "a" * 41])
def test_parse_catalogue_refuses_a_bad_slug(slug):
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(entry(slug=slug))
    assert str(error.value).startswith(f"entry 2 ({slug}): slug ")


def test_parse_catalogue_refuses_an_unknown_field():
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(entry(comand=["run"]))
    message = str(error.value)
    assert message.startswith("entry 2 (second): unknown field 'comand'")
    assert "command" in message  # the known fields are listed, so the typo is easy to spot


def test_parse_catalogue_refuses_a_duplicate_slug():
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(entry(slug="good"))
    assert str(error.value) == "entry 2 (good): slug 'good' appears twice"


@pytest.mark.parametrize("document", ["tools:\n  - 3\n", "- just a string\n", "- [a, b]\n"])
def test_parse_catalogue_refuses_an_entry_that_is_not_a_mapping(document):
    with pytest.raises(CatalogueError, match=r"^entry 1: each entry must be a mapping of fields"):
        parse_catalogue(document)


@pytest.mark.parametrize("document", ["tools: [\n", "tools:\n  - slug: a\n   name: b\n", "{{{", "\tfoo: bar"])
def test_parse_catalogue_refuses_text_that_is_not_yaml(document):
    with pytest.raises(CatalogueError, match="not valid YAML"):
        parse_catalogue(document)


@pytest.mark.parametrize("document", ["", "just text", "42", "tools: 3", "tools: {echo: {}}", "other: []"])
def test_parse_catalogue_refuses_a_document_that_is_not_a_list(document):
    with pytest.raises(CatalogueError, match="must hold a list of tools under the key 'tools'"):
        parse_catalogue(document)


# -- load_catalogue ---------------------------------------------------------------------

def test_load_catalogue_creates_templates(app):
    assert load_catalogue(DEMO_CATALOGUE.read_text()) == (4, 0)
    loaded = templates()
    assert sorted(loaded) == ["broken", "echo", "jupyterlab", "team-echo"]
    assert loaded["echo"].name == "Echo"
    assert loaded["echo"].command == ["{python}", "-m", "berth_tools.echo", "--host", "{ip}", "--port", "{port}"]
    assert loaded["echo"].health_path == "/headers"


def test_load_catalogue_twice_changes_nothing(app):
    load_catalogue(DEMO_CATALOGUE.read_text())
    before = {slug: t.updated_at for slug, t in templates().items()}
    assert load_catalogue(DEMO_CATALOGUE.read_text()) == (0, 0)
    assert count(ToolTemplate) == 4
    db.session.expire_all()
    assert {slug: t.updated_at for slug, t in templates().items()} == before


def test_load_catalogue_updates_changed_templates_and_adds_new_ones(app):
    load_catalogue(GOOD)
    changed = GOOD.replace("name: Notes", "name: Team notes") + (
        "  - slug: extra\n    name: Extra\n    command: [extra]\n    enabled: false\n")
    assert load_catalogue(changed) == (1, 1)
    db.session.expire_all()
    loaded = templates()
    assert loaded["notes"].name == "Team notes"
    assert loaded["echo"].name == "Echo"
    assert loaded["extra"].enabled is False


def test_load_catalogue_keeps_templates_missing_from_the_file(app):
    load_catalogue(GOOD)
    assert load_catalogue("tools:\n  - {slug: echo, name: Echo 2, command: [x]}\n") == (0, 1)
    assert sorted(templates()) == ["echo", "notes"]


def test_load_catalogue_records_an_event(app):
    load_catalogue(GOOD, actor="tester")
    [event] = db.session.execute(select(Event).where(Event.kind == "catalogue.load")).scalars()
    assert event.actor == "tester"
    assert event.message == "Catalogue loaded: 2 new, 0 changed"


def test_load_catalogue_writes_nothing_when_any_entry_is_invalid(app):
    load_catalogue(GOOD)
    events = count(Event)
    # The first entry would change a template and the second would add one; the third is bad.
    bad = GOOD.replace("name: Echo", "name: Echo changed") + (
        "  - slug: fresh\n    name: Fresh\n    command: [x]\n"
        "  - slug: bad\n    name: Bad\n    command: [x]\n    port: eighty\n")
    with pytest.raises(CatalogueError, match=r"^entry 4 \(bad\): port must be a whole number"):
        load_catalogue(bad)
    db.session.rollback()
    db.session.expire_all()
    loaded = templates()
    assert sorted(loaded) == ["echo", "notes"]
    assert loaded["echo"].name == "Echo"
    assert count(Event) == events


def test_load_catalogue_on_an_empty_database_writes_nothing_when_invalid(app):
    with pytest.raises(CatalogueError):
        load_catalogue(entry(enabled="no"))
    db.session.rollback()
    assert count(ToolTemplate) == 0
    assert count(Event) == 0


@pytest.mark.parametrize("value", ["yes", 1, None, "true"])
def test_parse_catalogue_refuses_api_tokens_that_is_not_a_boolean(value):
    entry = {"slug": "a", "name": "A", "command": ["x"], "api_tokens": value}
    with pytest.raises(CatalogueError, match=r"entry 1 \(a\): api_tokens must be true or false"):
        parse_catalogue(json.dumps([entry]))  # JSON is YAML too


@pytest.mark.parametrize("fields, field", [
    ({"slug": "Bad"}, "slug"), ({"port": "x"}, "port"), ({"sizes": [{"name": "s", "cpu": 0, "memory_mb": 64}]}, "sizes"),
    ({"ip_allowlist": ["nowhere"]}, "ip_allowlist"), ({"command": []}, "command"), ({"comand": ["x"]}, "comand"),
])
def test_an_error_names_its_field_for_the_admin_form(fields, field):
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(entry(**fields))
    assert error.value.field == field


def test_parse_catalogue_reports_every_error_at_once_with_its_line():
    text = """tools:
  - slug: a
    name: 7
    command: [x, '{nope}']
    port: nine
    colour: red
  - slug: b
    name: B
  - {slug: Bad!, name: C, command: [x]}
  - {slug: fine, name: Fine, command: [x]}
  - slug: a
    name: A
    command: [x]
"""
    with pytest.raises(CatalogueError) as error:
        parse_catalogue(text)
    assert error.value.lines("tools.yml") == [
        "tools.yml:3: entry 1 (a): name must be a non-empty string",
        "tools.yml:4: entry 1 (a): command[2]: {nope} is not a placeholder Berth fills (it fills {port}, {ip}, "
        "{python}, {home})",
        "tools.yml:5: entry 1 (a): port must be a whole number",
        "tools.yml:6: entry 1 (a): unknown field 'colour' (known: api_tokens, backend, command, description, "
        "egress, enabled, env, groups, health_path, home, identity_headers, idle_timeout, image, ip_allowlist, name, "
        "port, shared, sizes, slug, spawn_timeout)",
        "tools.yml:7: entry 2 (b): command is required for the process backend",
        "tools.yml:9: entry 3 (Bad!): slug must start with a letter and hold only a-z, 0-9 and single hyphens",
        "tools.yml:11: entry 5 (a): slug 'a' appears twice",
    ]
    assert error.value.field == "name"  # the first, for a form


def test_a_catalogue_error_without_a_place_names_the_file_alone():
    with pytest.raises(CatalogueError) as error:
        parse_catalogue("tools: 3")
    assert error.value.lines("tools.yml") == ["tools.yml: the file must hold a list of tools under the key 'tools'"]
