"""A real OpenID provider for the tests: tests/oidc/provider.js (npm oidc-provider 9) on loopback.

The first use installs it with `npm ci` into tests/oidc/node_modules (about 3 s, from the
lock file). Each Berth stack registers a client of its own through dynamic client
registration; tests add accounts as they need them, and drive the provider's own login and
consent forms through HTTP or Chromium.
"""
import html
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

from tests.services import free_port, stop_process

HERE = Path(__file__).parent / "oidc"
FORM_ACTION = re.compile(r'<form method="post" action="([^"]+)"')


def install():
    """npm ci into tests/oidc/node_modules, unless that install matches the lock file already."""
    npm = shutil.which("npm")
    if not shutil.which("node") or not npm:
        raise RuntimeError("Node.js 20+ and npm are needed for the test OpenID provider "
                           "(apt-get install nodejs); `make test` installs nodejs")
    lock = HERE / "package-lock.json"
    stamp = HERE / "node_modules" / ".berth-installed"
    if stamp.exists() and stamp.read_text() == lock.read_text():
        return
    result = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=HERE,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"npm ci in {HERE} failed:\n{result.stdout}\n{result.stderr}")
    stamp.write_text(lock.read_text())


class OidcProvider:
    """One running test provider. The issuer is http://127.0.0.1:<port>."""

    def __init__(self):
        install()
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="berth-oidc-"))
        self.admin_token = os.urandom(16).hex()
        self.process = None
        self._accounts = 0
        self.start()

    # -- the process ------------------------------------------------------------------------
    def start(self):
        """Start (or restart, on the same port and keys) and wait for discovery to answer."""
        env = {**os.environ, "PORT": str(self.port), "ADMIN_TOKEN": self.admin_token,
               "STATE_DIR": str(self.dir), "NODE_NO_WARNINGS": "1"}
        log = open(self.dir / "provider.log", "ab")
        self.process = subprocess.Popen(["node", str(HERE / "provider.js")], cwd=HERE, env=env,
                                        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the test OpenID provider exited; see {self.dir / 'provider.log'}")
            try:
                if requests.get(self.discovery_url, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the test OpenID provider did not answer; see {self.dir / 'provider.log'}")
            time.sleep(0.05)

    def stop(self):
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def discovery_url(self):
        return f"{self.issuer}/.well-known/openid-configuration"

    def log(self):
        return (self.dir / "provider.log").read_text(errors="replace")

    # -- configuration ------------------------------------------------------------------------
    def _post(self, path, payload):
        answer = requests.post(self.issuer + path, json=payload, timeout=10,
                               headers={"Authorization": f"Bearer {self.admin_token}"})
        assert answer.status_code in (200, 201), answer.text
        return answer.json()

    def register_client(self, base_url):
        """A confidential client for the Berth at base_url: returns (client_id, client_secret)."""
        client = self._post("/reg", {
            "redirect_uris": [f"{base_url}/auth/oidc/callback"],
            "post_logout_redirect_uris": [f"{base_url}/auth/login?signed_out=1"],
            "response_types": ["code"],
            "grant_types": ["authorization_code"],
            "token_endpoint_auth_method": "client_secret_basic",
            "client_name": "Berth under test",
        })
        return client["client_id"], client["client_secret"]

    def add_account(self, email=None, password="provider password 1", name=None, groups=None,
                    email_verified=True, sub=None):
        """An account at the provider (not yet in Berth). Returns its fields, password included."""
        self._accounts += 1
        tag = os.urandom(3).hex()
        account = {
            "sub": sub or f"sub-{tag}-{self._accounts}",
            "email": email or f"sso{self._accounts}-{tag}@example.org",
            "password": password,
            "email_verified": email_verified,
        }
        if name is not None:
            account["name"] = name
        if groups is not None:
            account["groups"] = groups
        self._post("/__test__/accounts", account)
        return account

    def update_account(self, account, **changes):
        account.update(changes)
        self._post("/__test__/accounts", account)
        return account

    def set_token_endpoint_skew(self, seconds):
        """Run the token endpoint's clock `seconds` off: -7200 makes it sign expired ID tokens."""
        self._post("/__test__/clock", {"token_endpoint_skew": seconds})


ADMIN_GROUP = "berth-admins"  # the groups claim's group whose members are Berth's administrators


def provider_env(provider, base_url):
    """The BERTH_OIDC_* settings for a Berth at base_url, with a client registered for it."""
    client_id, client_secret = provider.register_client(base_url)
    return {
        "BERTH_OIDC_ISSUER": provider.issuer,
        "BERTH_OIDC_CLIENT_ID": client_id,
        "BERTH_OIDC_CLIENT_SECRET": client_secret,
        "BERTH_OIDC_SCOPES": "openid email profile groups",
        "BERTH_OIDC_GROUPS_CLAIM": "groups",
        "BERTH_OIDC_ADMIN_GROUP": ADMIN_GROUP,
        "BERTH_OIDC_PROVIDER_NAME": "Test Identity Provider",
    }


class ProviderForms:
    """Drives the provider's own login and consent forms over HTTP, as a person would.

    `browser` is a requests.Session: it keeps the provider's cookies (its sign-in session)
    as well as Berth's, like one real browser.
    """

    def __init__(self, provider, berth_base_url):
        self.provider = provider
        self.berth = berth_base_url

    def start(self, browser, next_url=None):
        """Open Berth's single sign-on link; return the provider's authorization URL it redirects to."""
        params = {"next": next_url} if next_url else {}
        answer = browser.get(f"{self.berth}/auth/oidc/login", params=params, allow_redirects=False, timeout=10,
                             headers={"Accept": "text/html"})
        assert answer.status_code == 302, answer.text
        location = answer.headers["Location"]
        assert location.startswith(self.provider.issuer + "/"), location
        return location

    def authorize(self, browser, authorization_url, account, action="confirm"):
        """Sign in and consent at the provider; return the callback URL into Berth (not yet opened).

        action "abort" presses Cancel on the login form instead.
        """
        url = authorization_url
        for _ in range(12):
            answer = browser.get(url, allow_redirects=False, timeout=10, headers={"Accept": "text/html"})
            if answer.is_redirect:
                url = urljoin(url, answer.headers["Location"])
                if url.startswith(self.berth):
                    return url
                continue
            assert answer.status_code == 200, answer.text
            form = FORM_ACTION.search(answer.text).group(1)
            if 'name="password"' in answer.text:
                target = form.rsplit("/", 1)[0] + "/abort" if action == "abort" else form
                data = {"username": account["sub"], "password": account["password"]}
            else:
                target, data = form, {}
            posted = browser.post(urljoin(url, html.unescape(target)), data=data, allow_redirects=False,
                                  timeout=10)
            assert posted.status_code == 303, posted.text
            url = urljoin(url, posted.headers["Location"])
            if url.startswith(self.berth):
                return url
        raise AssertionError(f"the provider never sent the browser back to Berth (last: {url})")

    def sign_in(self, browser, account, next_url=None):
        """The whole flow: Berth → provider forms → Berth's callback. Returns the callback's answer."""
        callback = self.authorize(browser, self.start(browser, next_url), account)
        return browser.get(callback, allow_redirects=False, timeout=20, headers={"Accept": "text/html"})
