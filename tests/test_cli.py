"""The operator's `berth` command line (deploy/cli.py): what an operator sees, and what it writes."""
import logging
import os
import shutil
import sqlite3
import subprocess
import time
import sys
from contextlib import closing
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner

from deploy.cli import cli

# The newest migration: what `berth db upgrade` must leave the database at.
HEAD_REVISION = ScriptDirectory(str(Path(__file__).resolve().parent.parent / "migrations")).get_current_head()

ROOT = Path(__file__).resolve().parent.parent
DEMO_CATALOGUE = ROOT / "deploy" / "demo-catalogue.yml"
BERTH = Path(sys.executable).parent / "berth"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _env(data_dir):
    return {"BERTH_DATA_DIR": str(data_dir), "BERTH_DATABASE_URL": f"sqlite:///{data_dir}/berth.db",
            "BERTH_DOMAIN": None, "BERTH_HTTP_PORT": None, "BERTH_SCHEME": None}


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory):
    """`berth db upgrade`, run once as the operator runs it; each test gets a copy of the result."""
    data_dir = tmp_path_factory.mktemp("migrated")
    env = {**os.environ, **{k: v for k, v in _env(data_dir).items() if v is not None}}
    for name in ("BERTH_DOMAIN", "BERTH_HTTP_PORT", "BERTH_SCHEME"):
        env.pop(name, None)
    done = subprocess.run([str(BERTH), "db", "upgrade"], env=env, capture_output=True, text=True,
                          timeout=60, cwd=data_dir)
    return data_dir / "berth.db", done


@pytest.fixture
def data_dir(tmp_path, migrated_db):
    shutil.copy(migrated_db[0], tmp_path / "berth.db")
    return tmp_path


@pytest.fixture
def berth(data_dir):
    """Run `berth ARGS...` in process against data_dir; extra environment variables as keywords."""
    def run(*args, **env):
        # `db upgrade` configures logging from alembic.ini, with handlers on the runner's
        # captured streams; put logging back as it was, so nothing writes to them later.
        root_handlers, root_level = logging.root.handlers[:], logging.root.level
        try:
            result = CliRunner().invoke(cli, list(args), env={**_env(data_dir), **env})
        finally:
            logging.root.handlers[:], logging.root.level = root_handlers, root_level
        # Whatever happened, the operator never sees a traceback: the command ends by itself.
        assert result.exception is None or isinstance(result.exception, SystemExit), result.output
        assert "Traceback" not in result.output
        return result
    return run


def query(data_dir, sql, *params):
    with closing(sqlite3.connect(data_dir / "berth.db")) as connection:
        return connection.execute(sql, params).fetchall()


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- db upgrade -------------------------------------------------------------------------

def test_db_upgrade_creates_the_schema(migrated_db):
    database, done = migrated_db
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with closing(sqlite3.connect(database)) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert {"users", "sessions", "tool_templates", "tool_instances", "events"} <= tables
    assert version == [(HEAD_REVISION,)]


def test_db_upgrade_twice_is_harmless(berth, data_dir):
    result = berth("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert query(data_dir, "SELECT version_num FROM alembic_version") == [(HEAD_REVISION,)]


# -- create-admin, create-user ----------------------------------------------------------

def test_create_admin_creates_an_administrator(berth, data_dir):
    result = berth("create-admin", "Ada@Example.org", "--password", "correct horse")
    assert result.exit_code == 0, result.output
    assert result.output == "Created admin ada@example.org.\n"
    [(email, is_admin, is_active, password_hash)] = query(
        data_dir, "SELECT email, is_admin, is_active, password_hash FROM users")
    assert (email, is_admin, is_active) == ("ada@example.org", 1, 1)
    assert "correct horse" not in password_hash
    assert query(data_dir, "SELECT kind, actor FROM events") == [("user.created", "cli")]


def test_create_admin_again_resets_the_password(berth, data_dir):
    berth("create-admin", "ada@example.org", "--password", "first password")
    [(first_hash,)] = query(data_dir, "SELECT password_hash FROM users")
    result = berth("create-admin", "ADA@example.org", "--password", "second password")
    assert result.exit_code == 0
    assert result.output == "Updated admin ada@example.org.\n"
    [(second_hash,)] = query(data_dir, "SELECT password_hash FROM users")
    assert second_hash != first_hash


def test_create_user_creates_a_non_admin(berth, data_dir):
    result = berth("create-user", "bob@example.org", "--password", "12345678")
    assert result.exit_code == 0, result.output
    assert result.output == "Created user bob@example.org.\n"
    assert query(data_dir, "SELECT email, is_admin FROM users") == [("bob@example.org", 0)]


def test_create_user_does_not_demote_an_admin(berth, data_dir):
    berth("create-admin", "ada@example.org", "--password", "12345678")
    result = berth("create-user", "ada@example.org", "--password", "87654321")
    assert result.output == "Updated admin ada@example.org.\n"
    assert query(data_dir, "SELECT is_admin FROM users") == [(1,)]


@pytest.mark.parametrize("command", ["create-admin", "create-user"])
def test_create_user_refuses_a_short_password(berth, data_dir, command):
    result = berth(command, "ada@example.org", "--password", "1234567")
    assert result.exit_code != 0
    assert "Error: The password must have at least 8 characters." in result.output
    assert query(data_dir, "SELECT count(*) FROM users") == [(0,)]


@pytest.mark.parametrize("email", ["ada", "", "   ", "a" * 320 + "@example.org"])
def test_create_admin_refuses_a_bad_email(berth, data_dir, email):
    result = berth("create-admin", email, "--password", "correct horse")
    assert result.exit_code != 0
    assert "is not an email address." in result.output
    assert query(data_dir, "SELECT count(*) FROM users") == [(0,)]


def test_create_admin_needs_a_password(berth):
    result = berth("create-admin", "ada@example.org")
    assert result.exit_code != 0
    assert "Missing option '--password'" in result.output


# -- catalogue load ---------------------------------------------------------------------

def test_catalogue_load_reports_what_it_loaded(berth, data_dir):
    result = berth("catalogue", "load", str(DEMO_CATALOGUE))
    assert result.exit_code == 0, result.output
    assert result.output == f"Catalogue loaded from {DEMO_CATALOGUE}: 4 new, 0 changed.\n"
    assert query(data_dir, "SELECT slug FROM tool_templates ORDER BY slug") == [
        ("broken",), ("echo",), ("jupyterlab",), ("team-echo",)]


def test_catalogue_load_twice_changes_nothing(berth):
    berth("catalogue", "load", str(DEMO_CATALOGUE))
    result = berth("catalogue", "load", str(DEMO_CATALOGUE))
    assert result.exit_code == 0
    assert result.output.endswith(": 0 new, 0 changed.\n")


def test_catalogue_load_refuses_an_invalid_file_and_loads_nothing(berth, data_dir):
    path = write(data_dir / "tools.yml", """
tools:
  - slug: fine
    name: Fine
    command: [fine]
  - slug: jupyter
    name: Jupyter
    command: [jupyter]
    spawn_timeout: soon
""")
    result = berth("catalogue", "load", path)
    assert result.exit_code != 0
    assert result.output == (f"{path}:9: entry 2 (jupyter): spawn_timeout must be a whole number\n"
                             "Error: Nothing was loaded.\n")
    assert query(data_dir, "SELECT count(*) FROM tool_templates") == [(0,)]
    assert query(data_dir, "SELECT count(*) FROM events") == [(0,)]


def test_catalogue_load_keeps_the_previous_catalogue_when_the_new_one_is_invalid(berth, data_dir):
    berth("catalogue", "load", str(DEMO_CATALOGUE))
    text = DEMO_CATALOGUE.read_text().replace("name: Echo", "name: Echo renamed")
    path = write(data_dir / "tools.yml", text + "  - slug: Bad Slug\n    name: x\n    command: [x]\n")
    result = berth("catalogue", "load", path)
    assert result.exit_code != 0
    assert "entry 5 (Bad Slug): slug must start with a letter" in result.output
    assert query(data_dir, "SELECT name FROM tool_templates WHERE slug = 'echo'") == [("Echo",)]
    assert query(data_dir, "SELECT count(*) FROM tool_templates") == [(4,)]


def test_catalogue_load_refuses_text_that_is_not_yaml(berth, data_dir):
    result = berth("catalogue", "load", write(data_dir / "tools.yml", "tools: [\n"))
    assert result.exit_code != 0
    assert "the file is not valid YAML" in result.output
    assert "Nothing was loaded." in result.output


def test_catalogue_load_refuses_a_file_that_is_not_utf8(berth, data_dir):
    path = data_dir / "tools.yml"
    path.write_bytes(b"\xff\xfe tools: []")
    result = berth("catalogue", "load", str(path))
    assert result.exit_code != 0
    assert result.output == f"Error: cannot read {path}: it is not UTF-8 text. Nothing was loaded.\n"


def test_catalogue_load_names_a_missing_file(berth, data_dir):
    path = data_dir / "nowhere.yml"
    result = berth("catalogue", "load", str(path))
    assert result.exit_code != 0
    assert result.output == f"Error: cannot read {path}: No such file or directory\n"


def test_catalogue_load_refuses_a_directory(berth, data_dir):
    result = berth("catalogue", "load", str(data_dir))
    assert result.exit_code != 0
    assert "is a directory" in result.output


# -- nginx-conf -------------------------------------------------------------------------

def test_nginx_conf_prints_the_http_level_configuration(berth):
    result = berth("nginx-conf")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "auth_request /__berth_auth;" in text
    assert "server_name berth.localhost;" in text
    assert r"server_name ~^[a-z0-9-]+\.berth\.localhost$;" in text
    assert "listen 8080;" in text
    assert "server 127.0.0.1:8101;" in text  # the auth service
    assert "server 127.0.0.1:8102;" in text  # the web app
    assert "events {" not in text and "http {" not in text  # it goes inside the operator's http block
    assert "{{" not in text and "{%" not in text


def test_nginx_conf_follows_the_settings_and_options(berth):
    result = berth("nginx-conf", "--listen", "127.0.0.1:9000", "--auth-server", "10.0.0.1:81",
                   "--auth-server", "10.0.0.2:81", "--web-server", "10.0.0.3:82",
                   BERTH_DOMAIN="Tools.Example.org")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "server_name tools.example.org;" in text
    assert r"server_name ~^[a-z0-9-]+\.tools\.example\.org$;" in text
    assert "listen 127.0.0.1:9000;" in text
    assert "server 10.0.0.1:81 max_fails=1 fail_timeout=2s;" in text
    assert "server 10.0.0.2:81 max_fails=1 fail_timeout=2s;" in text
    assert "server 10.0.0.3:82;" in text
    assert "berth.localhost" not in text


def test_nginx_conf_standalone_passes_nginx_t(berth, data_dir):
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    prefix, out = data_dir / "nginx", data_dir / "nginx.conf"
    result = berth("nginx-conf", "--standalone", "--prefix", str(prefix), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output == ""
    text = out.read_text()
    assert text.lstrip().startswith("worker_processes")
    assert f"pid {prefix}/nginx.pid;" in text
    assert "auth_request /__berth_auth;" in text
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(out), "-e", f"{prefix}/logs/error.log",
         "-g", "user root root;"],
        capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_nginx_conf_standalone_needs_a_prefix(berth):
    result = berth("nginx-conf", "--standalone")
    assert result.exit_code != 0
    assert result.output == "Error: --standalone needs --prefix.\n"


def test_nginx_conf_names_a_file_it_cannot_write(berth, data_dir):
    out = data_dir / "missing" / "nginx.conf"
    result = berth("nginx-conf", "--out", str(out))
    assert result.exit_code != 0
    assert result.output == f"Error: cannot write {out}: No such file or directory\n"


def test_nginx_conf_names_a_prefix_it_cannot_create(berth, data_dir):
    (data_dir / "a-file").write_text("")
    prefix = data_dir / "a-file" / "nginx"
    result = berth("nginx-conf", "--standalone", "--prefix", str(prefix))
    assert result.exit_code != 0
    assert result.output == f"Error: cannot prepare --prefix {prefix}: Not a directory\n"


@pytest.mark.parametrize("domain", ["bad domain", "berth.localhost;", "evil.com{", "bérth.localhost",
                                    "berth.localhost/x"])
def test_nginx_conf_refuses_a_bad_domain(berth, domain):
    result = berth("nginx-conf", BERTH_DOMAIN=domain)
    assert result.exit_code != 0
    assert result.output == f"Error: BERTH_DOMAIN={domain.lower()!r} is not a plain host name\n"


# -- bad settings -----------------------------------------------------------------------

@pytest.mark.parametrize("args", [["nginx-conf"], ["db", "upgrade"], ["create-admin", "a@b.org", "--password", "12345678"],
                                  ["catalogue", "load", "x.yml"], ["reconcile"], ["cull"], ["run"]])
def test_a_bad_setting_is_named_without_a_traceback(berth, args):
    result = berth(*args, BERTH_HTTP_PORT="eighty")
    assert result.exit_code != 0
    assert "Error: BERTH_HTTP_PORT='eighty' is not a whole number" in result.output


def test_a_bad_scheme_is_named(berth):
    result = berth("nginx-conf", BERTH_SCHEME="gopher")
    assert result.exit_code != 0
    assert "Error: BERTH_SCHEME='gopher' must be one of http, https" in result.output


# -- berth check, and one line for every bad setting ----------------------------------------

BAD_SETTINGS = [
    ({"BERTH_DATABASE_URL": "nonsense://x"}, "BERTH_DATABASE_URL='nonsense://x' names a database driver"),
    ({"BERTH_DATABASE_URL": "postgresql+psycopg://berth:pw@127.0.0.1:1/berth"},
     "BERTH_DATABASE_URL: the database does not answer"),
    ({"BERTH_REDIS_URL": "localhost:6379"}, "BERTH_REDIS_URL='localhost:6379' is not a Redis URL"),
    ({"BERTH_DOMAIN": "bad_domain!"}, "BERTH_DOMAIN='bad_domain!' is not a plain host name"),
    ({"BERTH_DATA_DIR": "/proc/berth"}, "BERTH_DATA_DIR=/proc/berth: cannot write there"),
    ({"BERTH_HTTP_PORT": "eighty"}, "BERTH_HTTP_PORT='eighty' is not a whole number"),
]


def _berth_process(args, env, cwd):
    """`berth ARGS` as an operator runs it: its own process, its exit code, its output and time."""
    env = {**os.environ, **env}
    started = time.monotonic()
    done = subprocess.run([str(BERTH), *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
    return done, time.monotonic() - started


@pytest.mark.parametrize("bad, line", BAD_SETTINGS, ids=lambda value: next(iter(value)) if isinstance(value, dict) else "")
@pytest.mark.parametrize("command", [["check"], ["reconcile"], ["catalogue", "load", str(DEMO_CATALOGUE)], ["run"]])
def test_a_bad_setting_stops_any_command_in_one_line_within_10_s(data_dir, bad, line, command):
    env = {**{k: v for k, v in _env(data_dir).items() if v is not None}, **bad}
    done, seconds = _berth_process(command, env, data_dir)
    assert done.returncode == 1, done
    assert done.stdout == ""
    [shown] = done.stderr.splitlines()  # `berth check` lists problems; the others say Error:
    assert shown.removeprefix("Error: ").startswith(line), done.stderr
    assert seconds < 10


def test_a_redis_that_does_not_answer_is_named_by_check(berth):
    result = berth("check", BERTH_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.exit_code == 1
    assert result.output.splitlines() == ["BERTH_REDIS_URL: Redis does not answer "
                                          "(Error 111 connecting to 127.0.0.1:1. Connection refused.)"]


def test_check_names_every_problem_at_once(berth, data_dir):
    catalogue = write(data_dir / "tools.yml", "tools:\n  - slug: a\n    name: A\n    command: [x]\n    port: nine\n"
                                              "  - {slug: b, name: B}\n  - {slug: Bad!, name: C, command: [x]}\n")
    result = berth("check", BERTH_HTTP_PORT="0", BERTH_SCHEME="ftp", BERTH_REDIS_URL="redis:")
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "BERTH_SCHEME='ftp' must be one of http, https",
        "BERTH_HTTP_PORT=0 is below the minimum of 1",
        "BERTH_REDIS_URL='redis:' is not a Redis URL like redis://host:6379/0 (or rediss://, unix://)",
    ]
    result = berth("check", BERTH_CATALOGUE=catalogue)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"BERTH_CATALOGUE={catalogue}:5: entry 1 (a): port must be a whole number",
        f"BERTH_CATALOGUE={catalogue}:6: entry 2 (b): command is required for the process backend",
        f"BERTH_CATALOGUE={catalogue}:7: entry 3 (Bad!): slug must start with a letter and hold only "
        "a-z, 0-9 and single hyphens",
    ]


def test_check_passes_a_good_configuration_and_starts_nothing(berth, data_dir):
    result = berth("check", BERTH_CATALOGUE=str(DEMO_CATALOGUE))
    assert result.exit_code == 0, result.output
    assert result.output == "Berth's configuration is good: settings, catalogue, database and Redis.\n"
    assert query(data_dir, "SELECT count(*) FROM tool_templates") == [(0,)]


def test_commands_that_need_the_schema_ask_for_db_upgrade_first(tmp_path):
    env = {k: v for k, v in _env(tmp_path).items() if v is not None}
    for command in (["check"], ["catalogue", "load", str(DEMO_CATALOGUE)], ["create-user", "a@b.org", "--password", "12345678"]):
        done, seconds = _berth_process(command, env, tmp_path)
        assert done.returncode == 1
        assert "run `berth db upgrade` first" in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr


def test_help_lists_berths_commands_only_each_in_one_line(berth):
    result = berth("--help", BERTH_HTTP_PORT="eighty")  # help needs no settings
    assert result.exit_code == 0
    for flask_option in ("--app", "--debug", "--env-file"):
        assert flask_option not in result.output
    commands = result.output.split("Commands:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in commands] == ["check", "db", "catalogue", "create-admin", "create-user",
                                                      "nginx-conf", "local-certificate", "reconcile", "cull", "run",
                                                      "settings-doc"]
    assert all(not line.endswith("...") and line[2] != " " for line in commands)


# -- local-certificate --------------------------------------------------------------------

def test_local_certificate_covers_the_domains_and_nginx_serves_it(berth, data_dir):
    tls = {"BERTH_SCHEME": "https", "BERTH_TOOLS_DOMAIN": "tools.example.org"}
    result = berth("local-certificate", "--exports", **tls)
    assert result.exit_code == 0, result.output
    assert "--ignore-certificate-errors-spki-list=" in result.output
    exports = dict(part.split("=", 1) for part in result.output.splitlines()[0].removeprefix("export ").split())
    names = subprocess.run(["openssl", "x509", "-in", exports["BERTH_TLS_CERTIFICATE"], "-noout", "-ext",
                            "subjectAltName"], capture_output=True, text=True, check=True).stdout
    for name in ("DNS:berth.localhost", "DNS:*.berth.localhost", "DNS:*.tools.example.org"):
        assert name in names
    if not os.path.exists(NGINX):
        pytest.skip("nginx is not installed")
    prefix, out = data_dir / "nginx", data_dir / "nginx.conf"
    result = berth("nginx-conf", "--standalone", "--prefix", str(prefix), "--out", str(out), **tls, **exports,
                   BERTH_HSTS_SECONDS="300")
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "listen 8080 ssl;" in text and "return 301 https://$host:8080$request_uri;" in text
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(prefix), "-c", str(out), "-e", f"{prefix}/logs/error.log", "-g", "user root root;"],
        capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


def test_nginx_conf_names_a_certificate_it_cannot_read(berth, data_dir):
    result = berth("nginx-conf", BERTH_SCHEME="https", BERTH_TLS_CERTIFICATE=str(data_dir / "missing.pem"),
                   BERTH_TLS_KEY=str(data_dir / "missing.key"))
    assert result.exit_code != 0
    assert result.output == f"Error: BERTH_TLS_CERTIFICATE='{data_dir / 'missing.pem'}' is not a readable file\n"


def test_a_service_user_who_cannot_even_start_the_interpreter_gets_one_line(monkeypatch):
    """As under a Python in /root, which another user may not execute: no traceback."""
    import pwd

    from deploy import local

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", sys.executable)

    monkeypatch.setattr(local.subprocess, "run", refused)
    account = pwd.struct_passwd(("berth", "x", 4242, 4242, "", "/nonexistent", "/bin/false"))
    with pytest.raises(SystemExit) as refusal:
        local.check_account_runs_python(account, {})
    assert str(refusal.value).startswith("BERTH_SERVICE_USER=berth cannot run Berth's Python")
    assert "Permission denied" in str(refusal.value)
