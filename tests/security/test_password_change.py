"""Changing one's password on the Account page, attacked through the real nginx: someone who
holds only a signed-in browser cannot change it (nor guess the current one without limit), a
form from another site cannot, and a change signs out every other session that the old password
opened."""
import itertools

import requests

from berth.throttle import delay
from tests.actions import csrf_token, post_form, sign_in
from tests.integration.test_access import _FromAddress

WRONG_CURRENT = "That is not your current password."
_ADDRESSES = (f"127.0.{third}.{fourth}" for third, fourth in itertools.product(range(90, 100), range(2, 250)))


def _change(browser, stack, current, new, repeat=None):
    return post_form(browser, stack.base_url + "/account/password",
                     {"current": current, "new": new, "repeat": new if repeat is None else repeat},
                     page=stack.base_url + "/account", allow_redirects=False)


def _signs_in(stack, email, password):
    """Whether a fresh browser, from an address of its own, signs in with this password."""
    with requests.Session() as browser:
        browser.mount("http://", _FromAddress(next(_ADDRESSES)))
        return sign_in(browser, stack.base_url, email, password).status_code == 302


def _from_fresh_address(browser):
    """The same signed-in browser, now connecting from an address no other test counts against."""
    browser.mount("http://", _FromAddress(next(_ADDRESSES)))
    return browser


def test_a_signed_in_browser_alone_cannot_change_the_password(stack):
    user = stack.create_user()
    with _from_fresh_address(stack.login(user)) as browser:
        answer = _change(browser, stack, "not the password", "a brand new password")
        assert answer.status_code == 400
        assert WRONG_CURRENT in answer.text
    assert _signs_in(stack, user["email"], user["password"])
    assert not _signs_in(stack, user["email"], "a brand new password")


def test_guesses_at_the_current_password_are_throttled_as_sign_ins_are(stack):
    user = stack.create_user()
    threshold = stack.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    with _from_fresh_address(stack.login(user)) as browser:
        for guess in range(threshold):
            assert _change(browser, stack, f"guess {guess}", "a brand new password").status_code == 400
        # Past the threshold even the right password waits, and nothing changes.
        refused = _change(browser, stack, user["password"], "a brand new password")
        assert refused.status_code == 429, refused.text[:300]
        assert int(refused.headers["Retry-After"]) == delay(stack.config, threshold, threshold)
        assert f"Too many wrong passwords. Wait {refused.headers['Retry-After']} second" in refused.text
    rows = stack.query("SELECT kind FROM events WHERE user_id = :u AND kind LIKE 'user.password%' ORDER BY id",
                       u=user["id"])
    assert [row["kind"] for row in rows] == ["user.password_failed"] * threshold + ["user.password_throttled"]
    [row] = stack.query("SELECT password_hash FROM users WHERE id = :u", u=user["id"])
    with stack.app.app_context():
        from berth.models import User

        assert User(password_hash=row["password_hash"]).check_password(user["password"])


def test_a_change_signs_out_every_other_session_and_only_the_new_password_signs_in(stack):
    user = stack.create_user()
    other = stack.login(user)
    assert other.get(stack.base_url + "/", timeout=10).status_code == 200
    with _from_fresh_address(stack.login(user)) as browser:
        changed = _change(browser, stack, user["password"], "a brand new password")
        assert changed.status_code == 303 and changed.headers["Location"].endswith("/account#password")
        page = browser.get(stack.base_url + "/account", timeout=10)
        assert page.status_code == 200
        assert "Your password is changed. 1 other session was signed out." in page.text
    gone = other.get(stack.base_url + "/", headers={"Accept": "application/json"}, allow_redirects=False, timeout=10)
    assert gone.status_code == 401
    assert not _signs_in(stack, user["email"], user["password"])
    assert _signs_in(stack, user["email"], "a brand new password")


def test_a_form_from_another_site_changes_nothing(stack):
    user = stack.create_user()
    with _from_fresh_address(stack.login(user)) as browser:
        forged = browser.post(stack.base_url + "/account/password", allow_redirects=False, timeout=10,
                              data={"current": user["password"], "new": "chosen by the attacker",
                                    "repeat": "chosen by the attacker"})
        assert forged.status_code == 400
    assert _signs_in(stack, user["email"], user["password"])


def test_new_passwords_that_cannot_be_used_are_explained(stack):
    user = stack.create_user()
    with _from_fresh_address(stack.login(user)) as browser:
        short = _change(browser, stack, user["password"], "short")
        assert short.status_code == 400 and "The password must have at least 8 characters." in short.text
        differ = _change(browser, stack, user["password"], "a brand new password", repeat="a brand new pasword")
        assert differ.status_code == 400 and "The two new passwords differ." in differ.text
        same = _change(browser, stack, user["password"], user["password"])
        assert same.status_code == 400 and "The new password is the one you have now." in same.text
        assert csrf_token(same.text)  # the form is shown again, ready to correct
    assert _signs_in(stack, user["email"], user["password"])


def test_an_account_without_a_password_of_berths_has_none_to_change(stack):
    user = stack.create_user()
    browser = _from_fresh_address(stack.login(user))
    stack.query("UPDATE users SET password_hash = NULL WHERE id = :u", u=user["id"])
    page = browser.get(stack.base_url + "/account", timeout=10)
    assert page.status_code == 200 and 'id="password"' not in page.text
    answer = browser.post(stack.base_url + "/account/password", allow_redirects=False, timeout=10,
                          data={"csrf_token": csrf_token(page.text), "current": "", "new": "a brand new password",
                                "repeat": "a brand new password"})
    assert answer.status_code == 302
    assert "it has no Berth password to change" in browser.get(stack.base_url + "/account", timeout=10).text
    [row] = stack.query("SELECT password_hash FROM users WHERE id = :u", u=user["id"])
    assert row["password_hash"] is None
