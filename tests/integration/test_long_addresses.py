"""Very long addresses: nginx reads the auth answer's headers into a fixed buffer, and the login
address in a 401 repeats the original URL, percent-encoded. A long URL must still get a clear
answer (a redirect to sign in, or the tool), never nginx's 500 for an oversized upstream header."""
import pytest

PATHS = {"6 KB path": "/" + "a" * 6000, "query of encoded characters": "/?q=" + "%C3%A9" * 1000,
         "7 KB of percent signs": "/?q=" + "%25" * 2400}


@pytest.mark.parametrize("name", PATHS)
def test_a_long_address_signed_out_is_sent_to_sign_in(stack, alice, name):
    import requests

    answer = requests.get(stack.tool_url("echo", alice, PATHS[name]), headers={"Accept": "text/html"},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text[:300]
    # The sign-in hand-off for the tool host, which comes back home: the path is too long to keep.
    assert answer.headers["Location"].endswith("/auth/handoff?host=" + stack.tool_host("echo", alice) + "&next=%2F")
    assert len(answer.headers["Location"]) < 8000


@pytest.mark.parametrize("name", PATHS)
def test_a_long_address_reaches_the_running_tool(stack, alice, name):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo", alice, "/headers")
    answer = browser.get(stack.tool_url("echo", alice, PATHS[name]), timeout=10)
    assert answer.status_code == 200
