"""What a person does on Berth's pages, as the tests and the benchmarks do it with requests:
sign in through the login form, and post a form with its CSRF token.

    browser = signed_in(stack.base_url, user["email"], user["password"])
    post_form(browser, f"{base_url}/sharing/echo", {"kind": "user", "name": email})
    stop_instance(browser, base_url, instance_id)       # the catalogue's Stop button

Every form on Berth's pages carries the session's CSRF token in a hidden field; a POST without
it is refused (400).
"""
import re

import requests

CSRF_FIELD = re.compile(r'name="csrf_token"[^>]*value="([^"]+)"')
TIMEOUT = 10


def csrf_token(html):
    """The CSRF token of the form on a page (its HTML text); None when the page has no form."""
    found = CSRF_FIELD.search(html)
    return found.group(1) if found else None


def form_token(browser, page_url):
    """Open the page that shows a form, as a browser does, and return its CSRF token."""
    page = browser.get(page_url, headers={"Accept": "text/html"}, timeout=TIMEOUT)
    token = csrf_token(page.text) if page.status_code == 200 else None
    if token is None:
        raise RuntimeError(f"{page_url} answered {page.status_code} without a form: {page.text[:300]}")
    return token


def post_form(browser, url, data=None, page=None, **kwargs):
    """Post a form as a browser does, with the CSRF token of the page that shows it: page, by
    default url itself. The answer; keyword arguments go to requests (allow_redirects, …)."""
    kwargs.setdefault("timeout", TIMEOUT)
    return browser.post(url, data={"csrf_token": form_token(browser, page or url), **(data or {})}, **kwargs)


def stop_instance(browser, base_url, instance_id, **kwargs):
    """The Stop button of a running tool on the catalogue page."""
    return post_form(browser, f"{base_url}/instances/{instance_id}/stop", page=f"{base_url}/", **kwargs)


def post_login(browser, base_url, token, email, password, next="/"):
    """Post the login form with this CSRF token (None: without one); the answer, not followed."""
    data = {"email": email, "password": password, "next": next}
    if token is not None:
        data["csrf_token"] = token
    return browser.post(f"{base_url}/auth/login", data=data, allow_redirects=False,
                        headers={"Accept": "text/html"}, timeout=TIMEOUT)


def sign_in(browser, base_url, email, password, next="/"):
    """Open the login form in browser and post it; the answer (302 to next when signed in)."""
    return post_login(browser, base_url, form_token(browser, f"{base_url}/auth/login"), email, password, next)


def signed_in(base_url, email, password, verify=True):
    """A new requests.Session that asks for HTML as a browser does, signed in; close it when done.
    verify: what requests checks an HTTPS certificate against (a CA's file)."""
    browser = requests.Session()
    browser.verify = verify
    # requests lets REQUESTS_CA_BUNDLE from the environment override a session's own CA file.
    browser.trust_env = verify is True
    browser.headers["Accept"] = "text/html"
    answer = sign_in(browser, base_url, email, password)
    if answer.status_code != 302:
        browser.close()
        raise RuntimeError(f"signing in as {email} answered {answer.status_code}: {answer.text[:300]}")
    return browser
