"""/api/docs: the API reference for people, rendered on the server from the OpenAPI document.
Every operation is there, its curl examples run as written, and the page needs no script."""
import html
import re
import shlex
import subprocess

import pytest

from berth.tokens import TOKEN_REFUSALS
from tests.integration.test_tokens import make_token

pytestmark = pytest.mark.parametrize("berth_stack", ["postgres"], indirect=True)


def _examples(page):
    return [html.unescape(code) for code in re.findall(r"<pre><code>(curl [^<]*)</code></pre>", page)]


def test_the_docs_list_every_operation_with_a_curl_example_and_the_token_errors(stack, alice):
    browser = stack.login(alice)
    page = browser.get(f"{stack.base_url}/api/docs", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "<script" not in page.text  # nothing to run: it reads without JavaScript
    document = browser.get(f"{stack.base_url}/api/openapi.json", timeout=10).json()
    operations = [operation for item in document["paths"].values() for operation in item.values()]
    for operation in operations:
        assert f'id="{operation["operationId"]}"' in page.text
    assert len(_examples(page.text)) == len(operations)
    for message in TOKEN_REFUSALS.values():
        assert f"<code>{html.escape(message)}</code>" in page.text
    # A token reads the docs too.
    token = make_token(stack, browser)
    assert browser.get(f"{stack.base_url}/api/docs", headers={"Authorization": f"Bearer {token}"},
                       timeout=10).status_code == 200


def test_the_curl_examples_run_as_written(stack, alice):
    browser = stack.login(alice)
    token = make_token(stack, browser)
    page = browser.get(f"{stack.base_url}/api/docs", timeout=10).text
    ran = 0
    for example in _examples(page):
        words = shlex.split(example.replace("$BERTH_TOKEN", token))
        if "-X" in words:
            continue  # the calls that change things are not run here
        done = subprocess.run([*words, "-s", "-o", "/dev/null", "-w", "%{http_code}"], capture_output=True,
                              text=True, timeout=30)
        status = int(done.stdout)
        # Accepted as written: the token, the address, the method. An example id may name
        # nothing of alice's (404), and the administrators' endpoints are not hers (403).
        assert status in (200, 403, 404), (example, status)
        if example.endswith(("/api/me", "/api/tools", "/api/instances", "/api/tokens")):
            assert status == 200, example
        ran += 1
    assert ran >= 8
    # The token error a typo gets says so.
    typo = subprocess.run(["curl", "-s", "-H", "Authorization: Bearer berth_" + "x" * 43, f"{stack.base_url}/api/me"],
                          capture_output=True, text=True, timeout=30)
    assert TOKEN_REFUSALS["invalid"] in typo.stdout
