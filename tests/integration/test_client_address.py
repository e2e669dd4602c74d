"""The audit log and the sessions table record the client's real address behind a trusted proxy,
by the same rule as the IP allowlists (berth.addresses.request_client_address): what a client
writes into X-Forwarded-For itself is never taken for its address."""
import json

import pytest
import requests

from tests.actions import post_form, sign_in
from tests.integration.test_access import _FromAddress, behind_a_proxy  # noqa: F401 - a fixture


def _sign_in(stack, browser, user, password):
    return sign_in(browser, stack.base_url, user["email"], password)


def _sign_out(stack, browser):
    return post_form(browser, f"{stack.base_url}/auth/logout", allow_redirects=False)


def _recorded_addresses(stack, user):
    """{event kind: the address it recorded} for user's sign-in events."""
    rows = stack.query("SELECT kind, data FROM events WHERE user_id = :id AND kind LIKE 'auth.%' ORDER BY id",
                       id=user["id"])
    return {row["kind"]: (row["data"] if isinstance(row["data"], dict) else json.loads(row["data"]))["ip"]
            for row in rows}


@pytest.mark.parametrize("source, forwarded, seen", [
    ("127.0.0.2", "1.2.3.4, 5.6.7.8", "5.6.7.8"),   # the client wrote 1.2.3.4; the proxy appended the truth
    ("127.0.0.1", "1.2.3.4", "127.0.0.1"),          # straight to nginx, not through the proxy
])
def test_sign_in_events_and_the_session_record_the_real_client_address(behind_a_proxy, source, forwarded,  # noqa: F811
                                                                         seen):
    stack = behind_a_proxy
    user = stack.create_user()
    browser = requests.Session()
    browser.mount("http://", _FromAddress(source))
    browser.headers.update({"Accept": "text/html", "X-Forwarded-For": forwarded})

    assert _sign_in(stack, browser, user, "wrong").status_code == 401
    assert _sign_in(stack, browser, user, user["password"]).status_code == 302
    [session] = stack.query("SELECT client_ip FROM sessions WHERE user_id = :id", id=user["id"])
    assert _sign_out(stack, browser).status_code == 302

    assert _recorded_addresses(stack, user) == {"auth.login_failed": seen, "auth.login": seen, "auth.logout": seen}
    assert session["client_ip"] == seen
