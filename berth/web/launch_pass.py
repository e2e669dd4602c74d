"""Which navigations may start a tool that is not running.

A tool starts only from the user's own navigation: typed, bookmarked or reloaded (Fetch
Metadata's `Sec-Fetch-Site: none` or `same-origin`), or a click on Berth's own page. A link on
another site, or on another tool's page, leads to Berth's "Start it?" page instead
(webapp/lifecycle, webapp/catalogue confirm_launch).

A browser counts the whole redirect chain, so a user who types a tool's address while signed
out, or who has no cookie for that tool host yet, arrives there through the main host's sign-in
and hand-off, which the browser then reports as another site's. The main host's hand-off sees
the navigation as it was (none or same-origin) and says so with the code it sends; the tool
host's end of the hand-off then sets a launch pass: a cookie for that host alone, good for
PASS_SECONDS, signed with BERTH_SECRET_KEY, so that no other page can forge one.
"""
import hashlib
import hmac
import time

from berth.hosts import session_cookie_name

PASS_SECONDS = 60
# A page that polls sends this, so that a tab left open never launches the tool again.
NO_LAUNCH_HEADER = "X-Berth-No-Launch"


def is_navigation(method, headers):
    """Whether a request is a browser's top-level navigation (never a page's own XHR, fetch or
    WebSocket): what the browser calls one (Sec-Fetch-Mode), or, from a client that does not
    say, a GET that asks for HTML."""
    if method not in ("GET", "HEAD") or headers.get(NO_LAUNCH_HEADER):
        return False
    mode = headers.get("Sec-Fetch-Mode")
    if mode is not None:
        return mode == "navigate"
    return "text/html" in headers.get("Accept", "")


def own_navigation(headers):
    """Whether the browser says this request is the user's own doing or Berth's own page's.
    Clients without Fetch Metadata (scripts, and browsers over plain HTTP to hosts other than
    localhost) say nothing, and are taken at their word, as before."""
    return headers.get("Sec-Fetch-Site") in (None, "none", "same-origin")


def _sign(secret, message):
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()[:32]


def handoff_signature(secret, code):
    """Sent beside a hand-off code whose navigation was the user's own."""
    return _sign(secret, f"launch|{code}")


def pass_cookie_name(config):
    return session_cookie_name(config) + "_launch"


def launch_pass(secret, host, now=None):
    expiry = int(now if now is not None else time.time()) + PASS_SECONDS
    return f"{expiry}.{_sign(secret, f'pass|{host}|{expiry}')}"


def valid_launch_pass(secret, host, value, now=None):
    expiry, _, signature = (value or "").partition(".")
    if not expiry.isdigit() or int(expiry) < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(signature, _sign(secret, f"pass|{host}|{expiry}"))
