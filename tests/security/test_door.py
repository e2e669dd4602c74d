"""The door against a hostile client: internal locations, page headers, body limits, and
identity headers of other proxies. Slow clients and floods: test_slow_clients.py."""
import time

import pytest
import requests



def _main(stack, path):
    return stack.base_url + path


def test_the_internal_auth_check_does_not_answer_a_client(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    tool_host = stack.tool_url("echo", alice).split("//")[1].split(":")[0]
    answer = browser.get(_main(stack, "/auth/check"), headers={"X-Original-Host": tool_host,
                                                               "X-Original-URI": "/"}, timeout=10)
    assert answer.status_code == 404
    assert "X-Berth-Upstream" not in answer.headers and "X-Berth-User-Id" not in answer.headers


def test_nginx_never_names_its_version(stack):
    for answer in (requests.get(_main(stack, "/healthz"), timeout=10),
                   requests.get(f"http://127.0.0.1:{stack.port}/", headers={"Host": "nowhere.example"}, timeout=10)):
        assert answer.headers.get("Server") == "nginx"
        assert "nginx/" not in answer.text


@pytest.mark.parametrize("path", ["/", "/account", "/auth/login"])
def test_berths_pages_forbid_framing_sniffing_and_foreign_scripts(stack, alice, path):
    answer = stack.login(alice).get(_main(stack, path), timeout=10)
    assert answer.status_code == 200
    policy = answer.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Referrer-Policy"] == "same-origin"
    assert answer.headers["X-Frame-Options"] == "DENY"


def test_a_huge_sign_in_body_is_refused_before_the_auth_service_reads_it(stack):
    answer = requests.post(_main(stack, "/auth/login"), data=b"x" * (4 * 1024 * 1024),
                           headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert answer.status_code == 413


@pytest.mark.parametrize("header", ["X-Forwarded-User", "X-Forwarded-Email", "Remote-User",
                                    "X-Forwarded-Preferred-Username", "X-Auth-Request-User"])
def test_identity_headers_of_other_proxies_never_reach_a_tool_from_a_client(stack, alice, header):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice)
    seen = browser.get(stack.tool_url("echo", alice, "/headers"), headers={header: "admin@example.org"},
                       timeout=10).json()["headers"]
    assert not any(name.lower() == header.lower() and value for name, value in seen.items())


def _median_sign_in_seconds(stack, emails, password):
    """One wrong sign-in per email (one each: more would meet the per-account back-off)."""
    from tests.actions import form_token, post_login

    spent = []
    for email in emails:
        with requests.Session() as browser:
            token = form_token(browser, _main(stack, "/auth/login"))
            started = time.perf_counter()
            answer = post_login(browser, stack.base_url, token, email, password)
            spent.append(time.perf_counter() - started)
            assert answer.status_code == 401
    return sorted(spent)[len(spent) // 2]


def test_an_unknown_email_is_answered_as_slowly_as_a_wrong_password(stack):
    """The answer's time must not tell which emails have accounts: an unknown one is checked
    against a stand-in hash. (Without it, unknown emails were answered about 15 times faster.)"""
    known = _median_sign_in_seconds(stack, [stack.create_user()["email"] for _ in range(5)], "not the password")
    unknown = _median_sign_in_seconds(stack, [f"nobody-{n}-{time.monotonic_ns()}@example.org" for n in range(5)],
                                      "not the password")
    assert unknown > known * 0.5, (known, unknown)
