"""Add user, attacked: a non-administrator posts it with a good CSRF token, a page of another origin
posts it through an administrator's browser, a post comes without a token, and a name made of
markup is shown on every page that lists people, in real Chromium. Each attempt fails."""
import pytest

from tests.actions import form_token
from tests.browser.test_browser import _sign_in

pytestmark = [pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)]

NEW = {"email": "planted@example.org", "name": "Planted", "password": "correct horse battery", "is_admin": "y"}


def _users(stack, email):
    return stack.query("SELECT id, is_admin FROM users WHERE email = :email", email=email)


def test_a_user_who_is_not_an_administrator_cannot_add_an_administrator(stack, alice):
    browser = stack.login(alice)
    token = form_token(browser, f"{stack.base_url}/account")
    answer = browser.post(f"{stack.base_url}/admin/users/new", data={"csrf_token": token, **NEW},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 403
    assert _users(stack, NEW["email"]) == []


def test_an_administrators_browser_cannot_be_made_to_add_a_user(stack):
    admin = stack.create_user(is_admin=True)
    browser = stack.login(admin)
    # No CSRF token: refused.
    answer = browser.post(f"{stack.base_url}/admin/users/new", data=NEW, allow_redirects=False, timeout=10)
    assert answer.status_code == 400
    # A good token, but sent by a page of another origin (a tool's host): refused by the Origin check.
    token = form_token(browser, f"{stack.base_url}/admin/users/new")
    tool_origin = stack.tool_url("echo", admin, "").rstrip("/")
    answer = browser.post(f"{stack.base_url}/admin/users/new", data={"csrf_token": token, **NEW},
                          headers={"Origin": tool_origin}, allow_redirects=False, timeout=10)
    assert answer.status_code == 403 and "refuses this request" in answer.text
    assert _users(stack, NEW["email"]) == []


@pytest.mark.browser
def test_a_name_made_of_markup_is_shown_as_text_on_every_page_that_lists_people(stack, chromium):
    admin = stack.create_user(is_admin=True)
    marked = '<img src=x onerror="document.title=\'owned\'"><script>document.title="owned"</script>'
    browser = stack.login(admin)
    token = form_token(browser, f"{stack.base_url}/admin/users/new")
    answer = browser.post(f"{stack.base_url}/admin/users/new", allow_redirects=False, timeout=10,
                          data={"csrf_token": token, "email": "markup@example.org", "name": marked})
    assert answer.status_code == 201 and "&lt;script&gt;" in answer.text and "<script>document" not in answer.text
    [person] = _users(stack, "markup@example.org")

    context = chromium.new_context()
    try:
        page = context.new_page()
        dialogs = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        _sign_in(page, stack, admin)
        for path in ("/admin/users", f"/admin/users/{person['id']}", "/admin/audit"):
            page.goto(stack.base_url + path)
            page.wait_for_load_state("load")
            assert page.title() != "owned", path
            assert page.locator("main img[src=x], main script").count() == 0, path
        page.goto(stack.base_url + "/admin/users?q=markup")
        assert marked in page.locator("main").inner_text()  # shown, as text
        assert dialogs == []
    finally:
        context.close()
