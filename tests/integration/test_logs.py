"""Logs an operator can use, on a whole Berth with BERTH_LOG_FORMAT=json: nginx's access log says
which user and which instance each request served, with the upstream's time and a request id;
the same id is in the auth service's and the web app's lines for that request; a client's own
X-Request-Id is never taken for it; and every line of every process is one JSON object.
"""
import json
import re
import time

import pytest

from tests.conftest import _make_stack

NAVIGATE = {"Sec-Fetch-Mode": "navigate"}
FORGED_ID = "f" * 32  # what a client would send to pass its id off as nginx's


@pytest.fixture(scope="module")
def json_stack(tmp_path_factory):
    stack = _make_stack("logs", None, None, tmp_path_factory.mktemp("logs"), docker_url="",
                        extra_env={"BERTH_BACKENDS": "process", "BERTH_LOG_FORMAT": "json"})
    stack.start()
    yield stack
    stack.stop()


def _lines(path):
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _access_log(stack):
    return [json.loads(line) for line in _lines(stack.data_dir / "nginx" / "logs" / "access.log")]


def _entry_for(stack, predicate, timeout=5):
    """The access log's last entry for which predicate holds (nginx writes it once it answered)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [entry for entry in _access_log(stack) if predicate(entry)]
        if entries or time.monotonic() > deadline:
            assert entries, "no such entry in nginx's access log"
            return entries[-1]
        time.sleep(0.1)


def _process_lines(stack, name, request_id, timeout=5):
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(line) for line in _lines(stack.processes.log_path(name)) if request_id in line]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_the_access_log_names_user_instance_upstream_time_and_request_id(json_stack):
    stack = json_stack
    user = stack.create_user()
    with stack.login(user) as browser:
        stack.open_tool(browser, "echo", user)
        instance = [row for row in stack.instances() if row["state"] == "RUNNING"][-1]
        answer = browser.get(stack.tool_url("echo", user, "/logged-request"),
                             headers={"X-Request-Id": FORGED_ID}, timeout=10)
        assert answer.status_code == 200
    entry = _entry_for(stack, lambda entry: entry["request"].startswith("GET /logged-request "))
    assert entry["user_id"] == str(user["id"])
    assert entry["instance_id"] == str(instance["id"])
    assert entry["status"] == 200
    assert entry["host"] == stack.tool_host("echo", user)
    assert re.fullmatch(r"\d+\.\d{3}", entry["upstream_time"]), entry
    assert re.fullmatch(r"[0-9a-f]{32}", entry["request_id"]) and entry["request_id"] != FORGED_ID
    # The tool gets the request as it was sent: Berth does not add its id to what tools see.
    assert answer.json()["headers"].get("X-Request-Id") == FORGED_ID


def test_one_request_id_joins_nginx_the_web_app_and_the_auth_service(json_stack):
    stack = json_stack
    user = stack.create_user()
    with stack.login(user) as browser:
        answer = browser.get(f"{stack.base_url}/", headers={"X-Request-Id": FORGED_ID, **NAVIGATE}, timeout=10)
        assert answer.status_code == 200
        entry = _entry_for(stack, lambda entry: entry["request"] == "GET / HTTP/1.1"
                           and entry["user_id"] == str(user["id"]))
        web = _process_lines(stack, "web", entry["request_id"])
        assert [line for line in web if line["message"].startswith("GET / 200 ")], web
        assert web[0]["process"] == "web" and web[0]["request_id"] == entry["request_id"]
        assert not _process_lines(stack, "web", FORGED_ID, timeout=0)

        # A request the auth service refuses: its reason, in its own log, under nginx's id.
        refused = browser.get(f"{stack.base_url}/", headers={"X-Berth-User-Id": "1", **NAVIGATE}, timeout=10)
        assert refused.status_code == 403
    entry = _entry_for(stack, lambda entry: entry["status"] == 403)
    auth = _process_lines(stack, "auth", entry["request_id"])
    assert auth and "reserved header (X-Berth-User-Id)" in auth[0]["message"], auth
    assert auth[0]["process"] == "auth"


def test_every_line_of_every_process_is_json(json_stack):
    stack = json_stack
    user = stack.create_user()
    with stack.login(user) as browser:  # something for each process to say
        stack.open_tool(browser, "echo", user)
        browser.get(f"{stack.base_url}/", headers={"X-Berth-User-Id": "1"}, timeout=10)
    for name in ("auth", "web", "worker"):
        lines = _lines(stack.processes.log_path(name))
        assert lines, name
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                pytest.fail(f"{name}.log has a line that is not JSON: {line}")
            assert {"time", "level", "process", "logger", "message"} <= set(entry), line
    assert _access_log(stack)
