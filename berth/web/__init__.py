"""What both front doors share: the Flask base, the proxy-secret guard, the client's address and
the page layout.

The web app (webapp/) and the auth service (auth_service/) are separate Flask apps that must
never import each other. Each starts from create_base_app(), which binds the settings and the
database; the worker and the `berth` command use it too. The page layout (templates/base.html)
lives here so that the sign-in pages and the web app's pages look the same.
"""
import hmac
import os

from flask import Flask, Response, current_app, request
from jinja2 import ChoiceLoader, FileSystemLoader

from berth.addresses import request_client_address
from berth.extensions import csrf, db, migrate
from berth.settings import load_settings

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "migrations")


def create_base_app(import_name, test_config=None, template_dirs=()):
    """A Flask app with Berth's settings, the database and CSRF protection bound to it."""
    app = Flask(import_name, static_folder=None)
    app.jinja_loader = template_loader(*template_dirs)
    app.config.update(load_settings())
    app.config.update(
        # Flask's own cookie carries only the CSRF token, on the main host only.
        SESSION_COOKIE_NAME="berth_csrf",
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
    )
    if test_config:
        app.config.update(test_config)
    app.config["SESSION_COOKIE_SECURE"] = app.config["BERTH_SCHEME"] == "https"
    db.init_app(app)
    migrate.init_app(app, db, directory=MIGRATIONS)
    csrf.init_app(app)
    return app


def template_loader(*extra_dirs):
    """Jinja loader for a front door's templates, searched before the shared layout."""
    return ChoiceLoader([FileSystemLoader(d) for d in extra_dirs] + [FileSystemLoader(TEMPLATES)])


def require_proxy_secret(config):
    """Refuse anything that did not come through nginx (which adds the shared secret)."""
    sent = request.headers.get("X-Berth-Proxy-Secret", "")
    if not hmac.compare_digest(sent.encode(), config["BERTH_PROXY_SECRET"].encode()):
        return Response("Berth answers only through its nginx.\n", status=403, mimetype="text/plain")
    return None


def client_ip():
    """The address of the client of this request, as text for the audit log and the sessions
    table; "" when it cannot be told. See berth.addresses.request_client_address."""
    address = request_client_address(current_app.config, request.headers.get("X-Real-IP") or request.remote_addr,
                                     request.headers.get("X-Forwarded-For", ""), appended_by_nginx=True)
    return str(address) if address is not None else ""
