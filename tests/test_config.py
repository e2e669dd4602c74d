"""Settings from BERTH_* variables: berth/settings.py fails loudly, naming the variable."""
import os
import runpy
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from berth.settings import (
    SETTINGS,
    SettingError,
    _persistent_secret,
    load_settings,
    parse_boolean,
    parse_int,
    parse_lowercase,
    parse_port_range,
    parse_string,
    read_setting,
    setting_problems,
)

ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"


# -- parse_boolean ----------------------------------------------------------------------

@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "On", " true "])
def test_parse_boolean_reads_true_values(raw):
    assert parse_boolean("BERTH_X", False, {"BERTH_X": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "OFF"])
def test_parse_boolean_reads_false_values(raw):
    assert parse_boolean("BERTH_X", True, {"BERTH_X": raw}) is False


@pytest.mark.parametrize("environ", [{}, {"BERTH_X": ""}, {"BERTH_X": "   "}])
def test_parse_boolean_uses_the_default_when_unset_or_blank(environ):
    assert parse_boolean("BERTH_X", True, environ) is True
    assert parse_boolean("BERTH_X", False, environ) is False


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "truee", "enabled"])
def test_parse_boolean_refuses_anything_else_naming_the_variable(raw):
    with pytest.raises(SettingError) as error:
        parse_boolean("BERTH_FLAG", False, {"BERTH_FLAG": raw})
    assert "BERTH_FLAG" in str(error.value)
    assert repr(raw) in str(error.value)


# -- parse_int --------------------------------------------------------------------------

def test_parse_int_reads_a_whole_number():
    assert parse_int("BERTH_N", 5, {"BERTH_N": " 42 "}) == 42
    assert parse_int("BERTH_N", 5, {"BERTH_N": "-3"}) == -3


def test_parse_int_uses_the_default_when_unset_or_blank():
    assert parse_int("BERTH_N", 5, {}) == 5
    assert parse_int("BERTH_N", 5, {"BERTH_N": ""}) == 5


@pytest.mark.parametrize("raw", ["abc", "1.5", "8080x", "0x10", "1e3"])
def test_parse_int_refuses_non_numbers_naming_the_variable(raw):
    with pytest.raises(SettingError, match=r"BERTH_N=.* is not a whole number"):
        parse_int("BERTH_N", 5, {"BERTH_N": raw})


def test_parse_int_refuses_a_value_below_the_minimum():
    with pytest.raises(SettingError, match="BERTH_N=0 is below the minimum of 1"):
        parse_int("BERTH_N", 5, {"BERTH_N": "0"}, minimum=1)


def test_parse_int_refuses_a_value_above_the_maximum():
    with pytest.raises(SettingError, match="BERTH_N=65536 is above the maximum of 65535"):
        parse_int("BERTH_N", 5, {"BERTH_N": "65536"}, 1, 65535)


def test_parse_int_accepts_the_bounds_themselves():
    assert parse_int("BERTH_N", 5, {"BERTH_N": "1"}, 1, 65535) == 1
    assert parse_int("BERTH_N", 5, {"BERTH_N": "65535"}, 1, 65535) == 65535


# -- parse_port_range -------------------------------------------------------------------

def test_parse_port_range_reads_low_and_high():
    assert parse_port_range("BERTH_PORTS", "20000-20999", {"BERTH_PORTS": "30000-30010"}) == (30000, 30010)
    assert parse_port_range("BERTH_PORTS", "20000-20999", {"BERTH_PORTS": "30000-30000"}) == (30000, 30000)


def test_parse_port_range_uses_the_default_when_unset():
    assert parse_port_range("BERTH_PORTS", "20000-20999", {}) == (20000, 20999)


@pytest.mark.parametrize("raw", ["20000", "a-b", "20000-", "-20000", "20000:20999", "1-2-3"])
def test_parse_port_range_refuses_a_malformed_range(raw):
    with pytest.raises(SettingError) as error:
        parse_port_range("BERTH_PORTS", "20000-20999", {"BERTH_PORTS": raw})
    assert "BERTH_PORTS" in str(error.value)
    assert "20000-20999" in str(error.value)  # the example of what to write


@pytest.mark.parametrize("raw", ["20999-20000", "80-1000", "1023-2000", "60000-65536", "0-0"])
def test_parse_port_range_refuses_ports_out_of_range_or_reversed(raw):
    with pytest.raises(SettingError, match=r"BERTH_PORTS=.* must lie within 1024-65535"):
        parse_port_range("BERTH_PORTS", "20000-20999", {"BERTH_PORTS": raw})


# -- parse_string -----------------------------------------------------------------------

def test_parse_string_strips_and_defaults():
    assert parse_string("BERTH_S", "d", {"BERTH_S": "  value "}) == "value"
    assert parse_string("BERTH_S", "d", {}) == "d"
    assert parse_string("BERTH_S", None, {"BERTH_S": " "}) is None


def test_parse_string_refuses_a_value_outside_the_choices():
    with pytest.raises(SettingError) as error:
        parse_string("BERTH_SCHEME", "http", {"BERTH_SCHEME": "ftp"}, choices=("http", "https"))
    assert str(error.value) == "BERTH_SCHEME='ftp' must be one of http, https"


def test_parse_string_accepts_a_choice():
    assert parse_string("BERTH_SCHEME", "http", {"BERTH_SCHEME": "https"}, choices=("http", "https")) == "https"


def test_parse_lowercase_takes_any_case_and_checks_the_lowered_value():
    assert parse_lowercase("BERTH_LEVEL", "info", {"BERTH_LEVEL": " WARNING "}, ("info", "warning")) == "warning"
    assert parse_lowercase("BERTH_LEVEL", "info", {}, ("info", "warning")) == "info"
    with pytest.raises(SettingError, match="BERTH_LEVEL='loud' must be one of info, warning"):
        parse_lowercase("BERTH_LEVEL", "info", {"BERTH_LEVEL": "Loud"}, ("info", "warning"))


# -- load_settings ----------------------------------------------------------------------

def test_load_settings_defaults(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    assert settings["BERTH_DATA_DIR"] == str(tmp_path)
    assert settings["BERTH_DOMAIN"] == "berth.localhost"
    assert settings["BERTH_SCHEME"] == "http"
    assert settings["BERTH_HTTP_PORT"] == 8080
    assert settings["BERTH_AUTH_PORT"] == 8101
    assert settings["BERTH_WEB_PORT"] == 8102
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/database/berth.db"
    assert settings["BERTH_REDIS_URL"] is None
    assert settings["BERTH_SESSION_COOKIE"] == "berth_session"
    assert settings["BERTH_SESSION_LIFETIME"] == 12 * 3600
    assert settings["BERTH_PORT_RANGE"] == (20000, 20999)
    assert settings["BERTH_ACTIVITY_INTERVAL"] == 60
    assert settings["BERTH_LEASE_SECONDS"] == 10
    assert settings["BERTH_CATALOGUE"] is None
    assert settings["BERTH_DEPLOYMENT"].startswith("berth-")
    assert settings["BERTH_TRUSTED_HOPS"] == 0


def test_load_settings_reads_the_environment(tmp_path):
    settings = load_settings({
        "BERTH_DATA_DIR": str(tmp_path),
        "BERTH_DOMAIN": "Berth.Example.COM",
        "BERTH_SCHEME": "https",
        "BERTH_HTTP_PORT": "443",
        "BERTH_DATABASE_URL": "postgresql+psycopg://u@db/berth",
        "BERTH_SECRET_KEY": "s3cret",
        "BERTH_PROXY_SECRET": "pr0xy",
        "BERTH_TRUSTED_HOPS": "2",
    })
    assert settings["BERTH_DOMAIN"] == "berth.example.com"
    assert settings["BERTH_SCHEME"] == "https"
    assert settings["BERTH_HTTP_PORT"] == 443
    assert settings["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/berth"
    assert settings["SECRET_KEY"] == "s3cret"
    assert settings["BERTH_PROXY_SECRET"] == "pr0xy"
    assert settings["BERTH_TRUSTED_HOPS"] == 2
    assert not (tmp_path / "secret_key").exists()  # nothing generated when both are given
    assert not (tmp_path / "proxy_secret").exists()


@pytest.mark.parametrize("name, raw, words", [
    ("BERTH_HTTP_PORT", "eighty", "is not a whole number"),
    ("BERTH_HTTP_PORT", "0", "below the minimum"),
    ("BERTH_AUTH_PORT", "70000", "above the maximum"),
    ("BERTH_WEB_PORT", "x", "is not a whole number"),
    ("BERTH_SCHEME", "HTTPS", "must be one of http, https"),
    ("BERTH_SESSION_LIFETIME", "30", "below the minimum of 60"),
    ("BERTH_PORT_RANGE", "100-200", "must lie within 1024-65535"),
    ("BERTH_LEASE_SECONDS", "2", "below the minimum of 3"),
    ("BERTH_TRUSTED_HOPS", "6", "above the maximum of 5"),
    ("BERTH_ACTIVITY_INTERVAL", "soon", "is not a whole number"),
])
def test_load_settings_fails_loudly_naming_the_variable(tmp_path, name, raw, words):
    with pytest.raises(SettingError) as error:
        load_settings({"BERTH_DATA_DIR": str(tmp_path), name: raw})
    assert str(error.value).startswith(f"{name}=")
    assert words in str(error.value)


def test_load_settings_derives_the_database_and_metrics_folder_from_the_data_directory(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path / "data")})
    assert settings["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/data/database/berth.db"
    assert settings["BERTH_METRICS_DIR"] == str(tmp_path / "data" / "metrics")
    assert (tmp_path / "data" / "secret_key").exists()


def test_the_flask_config_holds_the_settings_every_process_reads_and_no_others(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    for setting in SETTINGS:
        if setting.read_by:  # the entrypoint's, gunicorn's, docker compose's
            assert setting.name not in settings
        else:
            assert setting.config_key in settings
    assert settings["SECRET_KEY"] and "BERTH_SECRET_KEY" not in settings


# -- settings read without an app: gunicorn's ------------------------------------------------

def test_read_setting_reads_one_setting_by_its_definition(tmp_path):
    assert read_setting("BERTH_GUNICORN_WORKERS", {}) == 2
    assert read_setting("BERTH_LOG_LEVEL", {"BERTH_LOG_LEVEL": "DEBUG"}) == "debug"
    assert read_setting("BERTH_METRICS_DIR", {"BERTH_DATA_DIR": str(tmp_path)}) == str(tmp_path / "metrics")
    with pytest.raises(SettingError, match="BERTH_GUNICORN_THREADS=0 is below the minimum of 1"):
        read_setting("BERTH_GUNICORN_THREADS", {"BERTH_GUNICORN_THREADS": "0"})


def test_gunicorn_reads_its_processes_threads_and_log_level_from_the_settings(monkeypatch):
    monkeypatch.setenv("BERTH_GUNICORN_WORKERS", "3")
    monkeypatch.setenv("BERTH_GUNICORN_THREADS", "16")
    monkeypatch.setenv("BERTH_LOG_LEVEL", "Warning")
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert (conf["workers"], conf["threads"], conf["loglevel"]) == (3, 16, "warning")
    for name in ("BERTH_GUNICORN_WORKERS", "BERTH_GUNICORN_THREADS", "BERTH_LOG_LEVEL"):
        monkeypatch.delenv(name)
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert (conf["workers"], conf["threads"], conf["loglevel"]) == (2, 8, "info")


@pytest.mark.parametrize("name, raw, message", [
    ("BERTH_GUNICORN_WORKERS", "two", "Error: BERTH_GUNICORN_WORKERS='two' is not a whole number"),
    ("BERTH_GUNICORN_THREADS", "0", "Error: BERTH_GUNICORN_THREADS=0 is below the minimum of 1"),
    ("BERTH_LOG_LEVEL", "loud", "Error: BERTH_LOG_LEVEL='loud' must be one of debug, info, warning"),
])
def test_gunicorn_stops_on_a_bad_setting_with_one_line_naming_it(tmp_path, name, raw, message):
    result = subprocess.run(
        [str(Path(sys.executable).parent / "gunicorn"), "-c", str(GUNICORN_CONF), "--bind", "127.0.0.1:0",
         "webapp:create_app()"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "BERTH_DATA_DIR": str(tmp_path), name: raw},
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def _server_output(command, tmp_path, name, raw):
    result = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "BERTH_DATA_DIR": str(tmp_path), name: raw},
        capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("name, raw, message", [
    ("BERTH_DOMAIN", "bad_domain!", "Error: BERTH_DOMAIN='bad_domain!' is not a plain host name"),
    ("BERTH_REDIS_URL", "localhost:6379", "Error: BERTH_REDIS_URL='localhost:6379' is not a Redis URL"),
])
def test_the_worker_stops_on_a_bad_setting_with_one_line_naming_it(tmp_path, name, raw, message):
    code, output = _server_output([str(Path(sys.executable).parent / "huey_consumer"), "berth.launch.tasks.huey"],
                                  tmp_path, name, raw)
    assert code == 1
    [line] = output.splitlines()
    assert line.startswith(message)


@pytest.mark.parametrize("app", ["webapp:create_app", "auth_service:create_app"])
def test_granian_stops_on_a_bad_setting_naming_it_without_a_traceback(tmp_path, app):
    from deploy.local import granian_command

    command = granian_command("127.0.0.1", 0, app, workers=1, threads=1)
    code, output = _server_output(command, tmp_path, "BERTH_DATABASE_URL", "nonsense://x")
    assert code != 0
    assert "Error: BERTH_DATABASE_URL='nonsense://x' names a database driver that is not installed" in output
    assert "Traceback" not in output


# -- the persistent secret --------------------------------------------------------------

def test_persistent_secret_is_generated_once_and_reused(tmp_path):
    first = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    second = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    assert len(first["SECRET_KEY"]) >= 32
    assert first["SECRET_KEY"] == second["SECRET_KEY"]
    assert first["BERTH_PROXY_SECRET"] == second["BERTH_PROXY_SECRET"]
    assert first["SECRET_KEY"] != first["BERTH_PROXY_SECRET"]
    assert (tmp_path / "secret_key").read_text() == first["SECRET_KEY"]


def test_persistent_secret_file_is_readable_by_its_owner_only(tmp_path):
    load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    for name in ("secret_key", "proxy_secret"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


def test_persistent_secret_mode_ignores_a_permissive_umask(tmp_path):
    old = os.umask(0)
    try:
        _persistent_secret(tmp_path, "secret_key")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "secret_key").st_mode) == 0o600


def test_persistent_secret_creates_the_data_directory(tmp_path):
    data_dir = tmp_path / "not" / "there"
    value = _persistent_secret(data_dir, "secret_key")
    assert (data_dir / "secret_key").read_text() == value


def test_persistent_secret_differs_between_data_directories(tmp_path):
    assert _persistent_secret(tmp_path / "a", "s") != _persistent_secret(tmp_path / "b", "s")


def test_persistent_secret_racing_first_starts_agree_and_never_see_an_empty_secret(tmp_path):
    for attempt in range(10):
        data_dir = tmp_path / str(attempt)
        results, barrier = [], threading.Barrier(8)

        def first_start():
            barrier.wait()
            results.append(_persistent_secret(data_dir, "proxy_secret"))

        threads = [threading.Thread(target=first_start) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(results) == 8
        assert len(set(results)) == 1, "racing processes got different secrets"
        assert results[0], "a racing process got an empty secret"
        assert (data_dir / "proxy_secret").read_text() == results[0]
        assert [p.name for p in data_dir.iterdir()] == ["proxy_secret"]  # no drafts left behind


def test_persistent_secret_refuses_an_empty_file(tmp_path):
    # An empty proxy secret would let requests that bypass nginx through.
    (tmp_path / "proxy_secret").write_text("\n")
    with pytest.raises(SettingError, match="proxy_secret is empty"):
        load_settings({"BERTH_DATA_DIR": str(tmp_path)})


# -- metrics ----------------------------------------------------------------------------

def test_metrics_settings_default_to_off_and_a_folder_in_the_data_directory(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    assert settings["BERTH_METRICS_TOKEN"] is None
    assert settings["BERTH_METRICS_NETWORKS"] == ()
    assert settings["BERTH_METRICS_DIR"] == str(tmp_path / "metrics")


def test_metrics_settings_read_token_networks_and_folder(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_METRICS_TOKEN": "t" * 32,
                              "BERTH_METRICS_NETWORKS": "10.0.0.0/8, 192.0.2.1",
                              "BERTH_METRICS_DIR": str(tmp_path / "m")})
    assert settings["BERTH_METRICS_TOKEN"] == "t" * 32
    assert [str(net) for net in settings["BERTH_METRICS_NETWORKS"]] == ["10.0.0.0/8", "192.0.2.1/32"]
    assert settings["BERTH_METRICS_DIR"] == str(tmp_path / "m")


def test_the_worker_serves_metrics_only_on_a_port_it_is_given(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    assert settings["BERTH_WORKER_METRICS_PORT"] is None
    assert settings["BERTH_WORKER_METRICS_HOST"] == "127.0.0.1"
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_WORKER_METRICS_PORT": "9102",
                              "BERTH_WORKER_METRICS_HOST": "0.0.0.0"})
    assert settings["BERTH_WORKER_METRICS_PORT"] == 9102
    assert settings["BERTH_WORKER_METRICS_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("name, raw, message", [
    ("BERTH_WORKER_METRICS_PORT", "metrics", "BERTH_WORKER_METRICS_PORT='metrics' is not a whole number"),
    ("BERTH_WORKER_METRICS_PORT", "70000", "BERTH_WORKER_METRICS_PORT=70000 is above the maximum"),
    ("BERTH_METRICS_TOKEN", "short", "BERTH_METRICS_TOKEN must have at least 16 characters"),
    ("BERTH_METRICS_NETWORKS", "10.0.0.1/8", "BERTH_METRICS_NETWORKS[1] '10.0.0.1/8' is not a CIDR"),
])
def test_metrics_settings_refuse_a_weak_token_or_a_bad_network(tmp_path, name, raw, message):
    with pytest.raises(SettingError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings({"BERTH_DATA_DIR": str(tmp_path), name: raw})


# -- values checked before anything uses them ---------------------------------------------

@pytest.mark.parametrize("name, raw, words", [
    ("BERTH_DATABASE_URL", "nonsense://x", "names a database driver that is not installed"),
    ("BERTH_DATABASE_URL", "not a url", "is not a database URL like postgresql+psycopg://"),
    ("BERTH_REDIS_URL", "localhost:6379", "is not a Redis URL like redis://host:6379/0"),
    ("BERTH_REDIS_URL", "redis://host:port/0", "has a port that is not a number"),
    ("BERTH_DOMAIN", "bad_domain!", "is not a plain host name"),
    ("BERTH_DOMAIN", "-berth.example.org", "is not a plain host name"),
    ("BERTH_TOOLS_DOMAIN", "tools..example.org", "is not a plain host name"),
])
def test_urls_and_host_names_are_checked_when_read(tmp_path, name, raw, words):
    with pytest.raises(SettingError) as error:
        load_settings({"BERTH_DATA_DIR": str(tmp_path), name: raw})
    assert str(error.value).startswith(f"{name}=")
    assert words in str(error.value)


def test_a_password_in_a_bad_url_is_not_repeated(tmp_path):
    with pytest.raises(SettingError) as error:
        load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_REDIS_URL": "http://u:hunter2@redis/0"})
    assert "hunter2" not in str(error.value) and "u:***@redis" in str(error.value)


@pytest.mark.parametrize("data_dir", ["/proc/berth", "/etc/hostname/berth"])
def test_a_data_folder_that_cannot_be_written_is_named(data_dir):
    with pytest.raises(SettingError, match=f"^BERTH_DATA_DIR={data_dir}: cannot write there"):
        load_settings({"BERTH_DATA_DIR": data_dir})


def test_setting_problems_names_every_bad_setting_once(tmp_path):
    problems = setting_problems({"BERTH_DATA_DIR": str(tmp_path), "BERTH_HTTP_PORT": "eighty",
                                 "BERTH_REDIS_URL": "nowhere", "BERTH_DOMAIN": "a b"})
    assert [problem.split("=", 1)[0] for problem in problems] == \
        ["BERTH_DOMAIN", "BERTH_HTTP_PORT", "BERTH_REDIS_URL"]
    assert setting_problems({"BERTH_DATA_DIR": "/proc/berth"}) == \
        ["BERTH_DATA_DIR=/proc/berth: cannot write there (No such file or directory)"]
    assert setting_problems({"BERTH_DATA_DIR": str(tmp_path)}) == []


def test_the_default_deployment_label_differs_per_data_folder_and_stays(tmp_path):
    first = load_settings({"BERTH_DATA_DIR": str(tmp_path / "one")})["BERTH_DEPLOYMENT"]
    second = load_settings({"BERTH_DATA_DIR": str(tmp_path / "two")})["BERTH_DEPLOYMENT"]
    assert first != second and first.startswith("berth-") and second.startswith("berth-")
    assert (tmp_path / "one" / "deployment").read_text() == first
    (tmp_path / "one").rename(tmp_path / "moved")  # its tools carry the label: it stays
    assert load_settings({"BERTH_DATA_DIR": str(tmp_path / "moved")})["BERTH_DEPLOYMENT"] == first


@pytest.mark.parametrize("former_file", ["berth.db", "secret_key"])
def test_a_data_folder_from_before_the_per_folder_label_keeps_the_former_default(tmp_path, former_file):
    """Its tools were started labelled `berth`: they are still found, adopted and stopped."""
    (tmp_path / former_file).write_text("x")
    assert load_settings({"BERTH_DATA_DIR": str(tmp_path)})["BERTH_DEPLOYMENT"] == "berth"


def test_an_explicit_deployment_label_wins_and_writes_nothing(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_DEPLOYMENT": "prod"})
    assert settings["BERTH_DEPLOYMENT"] == "prod"
    assert not (tmp_path / "deployment").exists()


@pytest.mark.parametrize("environ, words", [
    ({"BERTH_TLS_CERTIFICATE": "/etc/berth/fullchain.pem", "BERTH_SCHEME": "https"},
     "BERTH_TLS_CERTIFICATE and BERTH_TLS_KEY go together"),
    ({"BERTH_TLS_KEY": "/etc/berth/privkey.pem", "BERTH_SCHEME": "https"},
     "BERTH_TLS_CERTIFICATE and BERTH_TLS_KEY go together"),
    ({"BERTH_TLS_CERTIFICATE": "/etc/berth/fullchain.pem", "BERTH_TLS_KEY": "/etc/berth/privkey.pem"},
     "so BERTH_SCHEME must be https"),
    ({"BERTH_TLS_CERTIFICATE": "/c.pem", "BERTH_TLS_KEY": "/k.pem", "BERTH_SCHEME": "https",
      "BERTH_HTTP_PORT": "8443", "BERTH_HTTP_REDIRECT_PORT": "8443"},
     "BERTH_HTTP_REDIRECT_PORT=8443 is BERTH_HTTP_PORT"),
])
def test_tls_settings_that_do_not_fit_together_are_refused(tmp_path, environ, words):
    with pytest.raises(SettingError, match=words):
        load_settings({"BERTH_DATA_DIR": str(tmp_path), **environ})


def test_tls_settings_are_read(tmp_path):
    settings = load_settings({"BERTH_DATA_DIR": str(tmp_path), "BERTH_SCHEME": "https",
                              "BERTH_TLS_CERTIFICATE": "/etc/berth/fullchain.pem",
                              "BERTH_TLS_KEY": "/etc/berth/privkey.pem", "BERTH_HSTS_SECONDS": "300"})
    assert settings["BERTH_TLS_CERTIFICATE"] == "/etc/berth/fullchain.pem"
    assert settings["BERTH_HTTP_REDIRECT_PORT"] == 80 and settings["BERTH_HSTS_SECONDS"] == 300
