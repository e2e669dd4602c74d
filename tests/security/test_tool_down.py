"""The page for a tool that does not answer, and its restart, as other users would abuse them.

Only whoever may start the tool restarts it: another user's attempt, with a CSRF token of their
own sign-in, is refused; a forged request that claims the tool is down never reaches the page.
"""
from tests.actions import csrf_token, form_token, post_form
from tests.integration.test_launch import _host


def _share(stack, owner_browser, slug, user):
    answer = post_form(owner_browser, f"{stack.base_url}/sharing/{slug}", {"kind": "user", "name": user["email"]},
                       allow_redirects=False)
    assert answer.status_code in (302, 303), answer.text[:300]


def test_another_user_cannot_restart_a_tool_through_its_restart_form(stack, alice, bob):
    owner = stack.login(alice)
    stack.open_tool(owner, "echo", alice)
    _share(stack, owner, "echo", bob)
    host = _host(stack, "echo", alice)
    before = stack.instances(host)[-1]
    restart = stack.tool_url("echo", alice, "/__berth/restart")

    grantee = stack.login(bob)
    stack.hand_off(grantee, "echo", alice)
    own_token = form_token(grantee, f"{stack.base_url}/")  # a good token, for bob's own sign-in
    refused = grantee.post(restart, data={"csrf_token": own_token}, allow_redirects=False, timeout=10)
    assert refused.status_code == 403 and "Only its owner" in refused.text

    stranger = stack.login(stack.create_user())
    assert stack.hand_off(stranger, "echo", alice).status_code == 403
    token = form_token(stranger, f"{stack.base_url}/")
    assert stranger.post(restart, data={"csrf_token": token}, allow_redirects=False,
                         timeout=10).status_code == 403  # the auth check: not shared with them

    # The owner's own session, without a token or with someone else's.
    assert owner.post(restart, allow_redirects=False, timeout=10).status_code == 400
    assert owner.post(restart, data={"csrf_token": own_token}, allow_redirects=False, timeout=10).status_code == 400

    after = stack.instances(host)[-1]
    assert (after["id"], after["state"]) == (before["id"], "RUNNING")


def test_the_not_answering_page_is_only_nginx_s(stack, alice):
    owner = stack.login(alice)
    stack.open_tool(owner, "echo", alice)
    page = stack.tool_url("echo", alice, "/__berth/not-answering")
    # Asked for directly, for a tool that answers: nothing there, and no restart form.
    direct = owner.get(page, headers={"Accept": "text/html"}, timeout=10)
    assert direct.status_code == 404 and csrf_token(direct.text) is None
    # A client's own copy of nginx's marker is refused by the auth check.
    forged = owner.get(page, headers={"Accept": "text/html", "X-Berth-Tool-Down": "1"}, timeout=10)
    assert forged.status_code == 403 and csrf_token(forged.text) is None
    assert "reserved header" in forged.text
