"""Sessions through nginx: an absolute and an idle lifetime, last use written at most once per
interval, and the Account page where a user sees their sessions and ends any of them."""
import hashlib
import re
from datetime import timedelta

import requests

from tests.actions import csrf_token, post_form

COOKIE = "berth_session"


def _token(browser):
    return next(c.value for c in browser.cookies if c.name == COOKIE)


def _hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def _row(stack, browser):
    [row] = stack.query("SELECT * FROM sessions WHERE token_hash = :h", h=_hash(_token(browser)))
    return row


def _status(stack, browser, url):
    return browser.get(url, headers={"Accept": "application/json"}, allow_redirects=False, timeout=10).status_code


def _shift(stack, browser, column, delta):
    """Move a session's timestamp back in the database (as time passing would)."""
    with stack.app.app_context():
        from berth.extensions import db
        from berth.models import Session

        session = db.session.execute(db.select(Session).where(Session.token_hash == _hash(_token(browser)))
                                     ).scalar_one()
        setattr(session, column, getattr(session, column) - delta)
        db.session.commit()


def test_a_session_unused_for_the_idle_lifetime_ends(stack, alice):
    idle = int(stack.app.config["BERTH_SESSION_IDLE_LIFETIME"])
    with stack.login(alice) as browser:
        tool = stack.tool_url("echo", alice, "/__berth/status")
        stack.hand_off(browser, "echo", alice)
        assert _status(stack, browser, stack.base_url + "/") == 200
        _shift(stack, browser, "last_seen_at", timedelta(seconds=idle - 120))
        assert _status(stack, browser, tool) == 200  # used in time: it carries on, and counts as used now
        _shift(stack, browser, "last_seen_at", timedelta(seconds=idle + 1))
        assert _status(stack, browser, tool) == 401
        assert _status(stack, browser, stack.base_url + "/") == 401
        page = browser.get(stack.base_url + "/", headers={"Accept": "text/html"}, allow_redirects=False, timeout=10)
        assert page.status_code == 302 and "/auth/login?next=" in page.headers["Location"]


def test_a_session_in_constant_use_still_ends_at_its_absolute_lifetime(stack, alice):
    lifetime = int(stack.app.config["BERTH_SESSION_LIFETIME"])
    with stack.login(alice) as browser:
        assert _status(stack, browser, stack.base_url + "/") == 200
        _shift(stack, browser, "expires_at", timedelta(seconds=lifetime - 600))
        assert _status(stack, browser, stack.base_url + "/") == 200  # just in time, and in use
        _shift(stack, browser, "expires_at", timedelta(seconds=601))
        assert _status(stack, browser, stack.base_url + "/") == 401


def test_last_use_is_written_at_most_once_per_interval(stack, alice):
    interval = int(stack.app.config["BERTH_ACTIVITY_INTERVAL"])
    with stack.login(alice) as browser:
        first = _row(stack, browser)["last_seen_at"]
        for _ in range(5):
            assert _status(stack, browser, stack.base_url + "/") == 200
        assert _row(stack, browser)["last_seen_at"] == first  # no write per request
        _shift(stack, browser, "last_seen_at", timedelta(seconds=interval + 1))
        shifted = _row(stack, browser)["last_seen_at"]
        assert _status(stack, browser, stack.base_url + "/") == 200
        written = _row(stack, browser)["last_seen_at"]
        assert written != shifted
        assert _status(stack, browser, stack.base_url + "/") == 200
        assert _row(stack, browser)["last_seen_at"] == written


def test_the_account_page_lists_sessions_and_ends_another_one_at_once(stack, alice, bob):
    laptop = stack.login(alice)
    phone = stack.login(alice)
    phone.headers["User-Agent"] = "Mozilla/5.0 (Linux; Android 14) Chrome/130.0 Mobile"
    assert _status(stack, phone, stack.base_url + "/") == 200
    phone_id = _row(stack, phone)["id"]
    tool = stack.tool_url("echo", alice, "/__berth/status")
    stack.hand_off(phone, "echo", alice)

    page = laptop.get(f"{stack.base_url}/account", timeout=10)
    assert page.status_code == 200
    assert page.text.count('data-session="') == 2
    assert re.search(r'class="current".*This browser', page.text, re.S)
    assert f'action="/account/sessions/{phone_id}/end"' in page.text
    csrf = csrf_token(page.text)

    # Without the CSRF token nothing happens; nor can bob end alice's session.
    assert laptop.post(f"{stack.base_url}/account/sessions/{phone_id}/end", timeout=10).status_code == 400
    with stack.login(bob) as other:
        refused = post_form(other, f"{stack.base_url}/account/sessions/{phone_id}/end",
                            page=f"{stack.base_url}/account")
        assert "That session had ended already." in refused.text
    assert _status(stack, phone, tool) == 200

    ended = laptop.post(f"{stack.base_url}/account/sessions/{phone_id}/end", data={"csrf_token": csrf}, timeout=10)
    assert ended.status_code == 200 and "The session is ended" in ended.text
    assert f'data-session="{phone_id}"' not in ended.text
    # The phone is signed out on its next request, on the main host and on tool hosts.
    assert _status(stack, phone, tool) == 401
    assert _status(stack, phone, stack.base_url + "/") == 401
    assert _status(stack, laptop, stack.base_url + "/") == 200
    laptop.close()
    phone.close()


def test_signing_out_all_other_sessions_keeps_this_one(stack, alice):
    browsers = [stack.login(alice) for _ in range(3)]
    here = browsers[0]
    answer = post_form(here, f"{stack.base_url}/account/sessions/end-others", page=f"{stack.base_url}/account")
    assert "Signed out 2 other sessions." in answer.text
    assert [_status(stack, b, stack.base_url + "/") for b in browsers] == [200, 401, 401]
    for browser in browsers:
        browser.close()
    with requests.Session() as stranger:
        assert stranger.get(f"{stack.base_url}/account", headers={"Accept": "application/json"},
                            timeout=10).status_code == 401
