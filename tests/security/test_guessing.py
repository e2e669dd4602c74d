"""Guessing passwords is throttled, through the real nginx: per account and per client address.

The stack has one trusted proxy in front of nginx (at 127.0.0.2), so that each test can play
clients at addresses of its own through X-Forwarded-For, and the tests' counts stay apart.
The waits are computed from the production settings, never shortened.
"""
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from berth.throttle import delay
from tests.actions import form_token, post_login, sign_in
from tests.integration.test_access import _FromAddress, behind_a_proxy  # noqa: F401 - a fixture

WRONG = "That email and password do not match an active account."
ALERT = re.compile(r'role="alert">([^<]*)<')


def _attempt(stack, address, email, password):
    """One sign-in from a client at address, behind the trusted proxy: the answer."""
    with requests.Session() as browser:
        browser.mount("http://", _FromAddress("127.0.0.2"))
        browser.headers["X-Forwarded-For"] = address
        return sign_in(browser, stack.base_url, email, password)


def _alert(answer):
    found = ALERT.search(answer.text)
    return found.group(1) if found else None


def _throttled_events(stack, *addresses):
    """The throttle's refusals in the audit log, of clients at these addresses."""
    rows = stack.query("SELECT message, data FROM events WHERE kind = 'auth.login_throttled' ORDER BY id")
    events = [{"message": row["message"], "data": _json(row["data"])} for row in rows]
    return [event for event in events if event["data"]["ip"] in addresses]


def _json(value):
    return json.loads(value) if isinstance(value, str) else value


def _refused(answer, kind):
    """The answer is the throttle's refusal for kind ("account" or "address")."""
    where = {"account": "for this account", "address": "from your address"}[kind]
    assert answer.status_code == 429, answer.text[:300]
    assert int(answer.headers["Retry-After"]) >= 1
    assert f"Too many failed sign-ins {where}. Wait {answer.headers['Retry-After']} second" in _alert(answer)


def test_spraying_many_accounts_from_one_address_is_refused_at_the_address_threshold(behind_a_proxy):
    stack = behind_a_proxy
    threshold = stack.config["BERTH_SIGN_IN_ADDRESS_FAILURES"]
    users = [stack.create_user() for _ in range(3)]
    # Each email is tried fewer times than the account threshold: only the address adds up.
    emails = [users[i % 3]["email"] if i % 2 else f"sprayed-{i}@example.org" for i in range(threshold)]
    for email in emails:
        assert _attempt(stack, "203.0.113.7", email, "Winter2026!").status_code == 401

    # Now even a right password from that address waits; from another address it is welcome.
    refused = _attempt(stack, "203.0.113.7", users[0]["email"], users[0]["password"])
    _refused(refused, "address")
    assert int(refused.headers["Retry-After"]) == delay(stack.config, threshold, threshold)
    assert _attempt(stack, "203.0.113.8", users[0]["email"], users[0]["password"]).status_code == 302

    [event] = _throttled_events(stack, "203.0.113.7")
    assert event["data"]["throttle"] == "address"
    assert event["message"] == f"Sign-in for {users[0]['email']} refused: too many failed sign-ins from your address"


def test_guessing_one_account_from_many_addresses_is_refused_at_the_account_threshold(behind_a_proxy):
    stack = behind_a_proxy
    threshold = stack.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    victim = stack.create_user()
    for i in range(threshold):
        assert _attempt(stack, f"198.51.100.{i + 1}", victim["email"], f"guess-{i}").status_code == 401

    # A fresh address changes nothing: the account itself must wait, whatever the password.
    refused = _attempt(stack, "198.51.100.200", victim["email"], f"guess-{threshold}")
    _refused(refused, "account")
    right = _attempt(stack, "198.51.100.201", victim["email"], victim["password"])
    _refused(right, "account")
    events = _throttled_events(stack, "198.51.100.200", "198.51.100.201")
    assert [row["data"]["throttle"] for row in events] == ["account", "account"]
    assert all(victim["email"] in row["message"] for row in events)


def test_the_owner_signs_in_once_the_back_off_has_elapsed(behind_a_proxy):
    stack = behind_a_proxy
    threshold = stack.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    owner = stack.create_user()
    for i in range(threshold):
        assert _attempt(stack, "192.0.2.10", owner["email"], f"guess-{i}").status_code == 401
    refused = _attempt(stack, "192.0.2.10", owner["email"], owner["password"])
    _refused(refused, "account")
    wait = delay(stack.config, threshold, threshold)  # the first step: 1 s in production too
    assert int(refused.headers["Retry-After"]) == wait

    time.sleep(wait + 0.2)
    assert _attempt(stack, "192.0.2.10", owner["email"], owner["password"]).status_code == 302
    # The success cleared the account's count: a new mistake is a plain mistake again.
    assert _attempt(stack, "192.0.2.10", owner["email"], "typo").status_code == 401
    assert _attempt(stack, "192.0.2.10", owner["email"], owner["password"]).status_code == 302


def test_an_unknown_email_and_a_wrong_password_answer_alike(behind_a_proxy):
    stack = behind_a_proxy
    threshold = stack.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    known = stack.create_user()
    unknown = "nobody-" + known["email"]
    answers = {}
    for email in (known["email"], unknown):
        answers[email] = [_attempt(stack, f"192.0.2.{20 + i}", email, f"guess-{i}") for i in range(threshold + 1)]
    for mine, theirs in zip(answers[known["email"]], answers[unknown]):
        assert (mine.status_code, _alert(mine), mine.headers.get("Retry-After")) == \
               (theirs.status_code, _alert(theirs), theirs.headers.get("Retry-After"))
    assert [answer.status_code for answer in answers[unknown]] == [401] * threshold + [429]
    assert _alert(answers[unknown][0]) == WRONG


def test_racing_guesses_are_each_counted_and_cannot_all_slip_in(behind_a_proxy):
    """Guesses fired at once, each from an address of its own: every one that was checked is
    counted (no lost update), and the rest are refused, though all left before any answer."""
    stack = behind_a_proxy
    victim = stack.create_user()
    guesses = 4 * stack.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    browsers = []
    for i in range(guesses):
        browser = requests.Session()
        browser.mount("http://", _FromAddress("127.0.0.2"))
        browser.headers["X-Forwarded-For"] = f"192.0.2.{100 + i}"
        browsers.append((browser, form_token(browser, f"{stack.base_url}/auth/login")))
    start = threading.Barrier(guesses)

    def guess(numbered):
        number, (browser, token) = numbered
        start.wait()
        return post_login(browser, stack.base_url, token, victim["email"], f"guess-{number}").status_code

    try:
        with ThreadPoolExecutor(max_workers=guesses) as pool:
            statuses = list(pool.map(guess, enumerate(browsers)))
    finally:
        for browser, _ in browsers:
            browser.close()

    assert set(statuses) == {401, 429}, statuses
    [row] = stack.query("SELECT failures FROM sign_in_throttles WHERE key = :key",
                        key=f"account:{victim['email'].lower()}")
    assert row["failures"] == statuses.count(401)
