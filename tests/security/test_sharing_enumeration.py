"""Sharing never tells which emails have accounts: sharing with an email that has none is
answered, listed and revoked exactly as sharing with one that has, over the form and the API.
Such a grant waits for that person: made an account later, they open the tool at once."""
import difflib
import os
import re

import pytest

from tests.integration.test_access import _revoke, _share
from tests.integration.test_tokens import _api, make_token

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres", "sqlite"], indirect=True)


def _visible(text, email):
    """The sharing page's answer, with the email and the page's one-time parts taken out."""
    text = text.replace(email, "EMAIL")
    return re.sub(r'(csrf_token" value="|name="csrf_token" type="hidden" value="|data-grant=")[^"]*', r"\1", text)


def test_the_sharing_form_answers_alike_for_an_account_and_for_no_account(stack):
    owner, colleague = stack.create_user(), stack.create_user()
    nobody = f"nobody-{os.urandom(3).hex()}@example.org"
    pages = {}
    for email in (colleague["email"], nobody):
        browser = stack.login(owner)
        shared = _share(stack, browser, "echo", "user", email)
        assert shared.status_code == 302
        page = browser.get(stack.base_url + shared.headers["Location"], timeout=10)
        grant_id = re.search(r'data-grant="(\d+)"', page.text).group(1)
        text = re.sub(r'class="time">[^<]*', "", page.text).replace(f"/{grant_id}/", "/ID/")
        pages[email] = _visible(text, email)
        assert _revoke(stack, browser, "echo", int(grant_id)).status_code == 302
    assert pages[colleague["email"]] == pages[nobody], "\n".join(difflib.unified_diff(
        pages[colleague["email"]].splitlines(), pages[nobody].splitlines(), lineterm=""))
    # Nor does sharing a second time tell them apart.
    browser = stack.login(owner)
    for email in (colleague["email"], nobody):
        assert _share(stack, browser, "echo", "user", email).status_code == 302
        again = _share(stack, browser, "echo", "user", email)
        assert again.status_code == 409 and f"{email} has access already" in again.text


def test_the_api_answers_alike_for_an_account_and_for_no_account(stack):
    owner, colleague = stack.create_user(), stack.create_user()
    nobody = f"nobody-{os.urandom(3).hex()}@example.org"
    token = make_token(stack, stack.login(owner), scope="launch")
    answers = []
    for email in (colleague["email"], nobody):
        answer = _api(stack, token, "/api/tools/echo/grants", method="POST", json={"user": email})
        body = answer.json()
        answers.append((answer.status_code, sorted(body), body.get("user") == email, body.get("group")))
    assert answers[0] == answers[1] and answers[0][0] == 201


def test_a_grant_to_an_email_without_an_account_becomes_that_persons_when_it_is_made(stack):
    owner = stack.create_user()
    email = f"newcomer-{os.urandom(3).hex()}@example.org"
    browser = stack.login(owner)
    stack.open_tool(browser, "echo", owner)
    assert _share(stack, browser, "echo", "user", email).status_code == 302
    [grant] = stack.query("SELECT user_id, email FROM tool_grants WHERE email = :email", email=email)
    assert grant["user_id"] is None
    newcomer = stack.create_user(email=email)
    assert stack.query("SELECT user_id, email FROM tool_grants WHERE user_id = :id", id=newcomer["id"]) == [
        {"user_id": newcomer["id"], "email": None}]
    with stack.login(newcomer) as as_newcomer:
        assert stack.open_tool(as_newcomer, "echo", owner, "/headers").status_code == 200
