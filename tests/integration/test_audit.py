"""The audit log: each action leaves one event naming who or what caused it, and the log cannot
be rewritten. (Grants are checked in test_access.py, administrators' changes in test_admin.py.)"""
import os
import signal

import pytest
import requests

from tests.actions import post_form, sign_in, stop_instance
from tests.integration.test_launch import _backend_state, _host, _wait_state
from tests.integration.test_lifecycle import cull_idle


def _events(stack, kind, **where):
    clauses = "".join(f" AND {column} = :{column}" for column in where)
    return stack.query(f"SELECT * FROM events WHERE kind = :kind{clauses} ORDER BY id", kind=kind, **where)


def test_sign_in_failed_sign_in_and_sign_out_are_recorded(stack, alice):
    sign_in(requests.Session(), stack.base_url, alice["email"], "wrong")
    [failed] = [e for e in _events(stack, "auth.login_failed") if alice["email"] in e["message"]]
    assert failed["actor"] == "anonymous"

    signed_in = stack.login(alice)
    [login] = _events(stack, "auth.login", user_id=alice["id"])
    assert login["actor"] == f"user:{alice['id']}"

    post_form(signed_in, f"{stack.base_url}/auth/logout")
    [logout] = _events(stack, "auth.logout", user_id=alice["id"])
    assert logout["actor"] == f"user:{alice['id']}"


def test_launch_and_stop_name_the_user_the_culler_and_the_reconciler(stack, alice):
    browser = stack.login(alice)
    host = _host(stack, "echo", alice)

    # The user launches and stops.
    stack.open_tool(browser, "echo", alice)
    [first] = stack.instances(host)
    [launch] = _events(stack, "instance.launch", instance_id=first["id"])
    assert launch["actor"] == f"user:{alice['id']}" and launch["user_id"] == alice["id"]
    stop_instance(browser, stack.base_url, first["id"])
    _wait_state(stack, host, ("STOPPED",))
    [stop] = _events(stack, "instance.stop", instance_id=first["id"])
    assert stop["actor"] == f"user:{alice['id']}"

    def not_running():  # once nginx's auth cache no longer holds the stopped tool's answer
        return stack.until_stopped_tool_is_let_go(browser, host)

    # The idle culler stops it.
    not_running()
    stack.open_tool(browser, "echo", alice)
    second = stack.instances(host)[-1]
    cull_idle(stack, second)
    [stop] = _events(stack, "instance.stop", instance_id=second["id"])
    assert stop["actor"] == "culler"

    # The reconciler finds it gone.
    not_running()
    stack.open_tool(browser, "echo", alice)
    third = stack.instances(host)[-1]
    os.killpg(_backend_state(third)["pid"], signal.SIGKILL)
    assert stack.berth("reconcile").returncode == 0
    _wait_state(stack, host, ("FAILED",))
    [gone] = _events(stack, "reconcile.gone", instance_id=third["id"])
    assert gone["actor"] == "reconciler"


def test_the_events_table_refuses_updates_and_deletes(stack, alice):
    stack.login(alice)
    [login] = _events(stack, "auth.login", user_id=alice["id"])
    for statement in ("UPDATE events SET message = 'rewritten' WHERE id = :id", "DELETE FROM events WHERE id = :id"):
        with pytest.raises(Exception, match="append-only"):
            stack.query(statement, id=login["id"])
    assert _events(stack, "auth.login", user_id=alice["id"])[0]["message"] == login["message"]
