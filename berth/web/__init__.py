"""What both front doors share: the Flask base, the proxy-secret guard, the client's address and
the page layout.

The web app (webapp/) and the auth service (auth_service/) are separate Flask apps that must
never import each other. Each starts from create_base_app(), which binds the settings and the
database; the worker and the `berth` command use it too. The page layout (templates/base.html)
lives here so that the sign-in pages and the web app's pages look the same.
"""
import hmac
import os
import re

from flask import Flask, Response, current_app, request
from flask.sessions import SecureCookieSessionInterface
from jinja2 import ChoiceLoader, FileSystemLoader
from markupsafe import Markup, escape

from berth.addresses import request_client_address
from berth.database import bound_engine, engine_options, make_sqlite_folder
from berth.extensions import csrf, db, migrate
from berth.hosts import is_main_host, public_url
from berth.settings import load_settings_or_exit
from berth.web.errors import install_error_handlers

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MIGRATIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "migrations")


def create_base_app(import_name, test_config=None, template_dirs=()):
    """A Flask app with Berth's settings, the database and CSRF protection bound to it."""
    app = Flask(import_name, static_folder=None)
    app.jinja_loader = template_loader(*template_dirs)
    app.add_template_filter(label_cells)
    app.config.update(load_settings_or_exit())
    app.config.update(
        # Flask's own cookie carries only the CSRF token, on the main host only.
        SESSION_COOKIE_NAME="berth_csrf",
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
    )
    if test_config:
        app.config.update(test_config)
    app.config["SESSION_COOKIE_SECURE"] = app.config["BERTH_SCHEME"] == "https"
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS",
                          engine_options(app.config, app.config["SQLALCHEMY_DATABASE_URI"]))
    make_sqlite_folder(app.config["SQLALCHEMY_DATABASE_URI"])
    db.init_app(app)
    with app.app_context():
        bound_engine(db.engine, app.config)
    migrate.init_app(app, db, directory=MIGRATIONS)
    csrf.init_app(app)
    app.before_request(refuse_foreign_origin)
    app.after_request(add_page_headers)
    app.context_processor(page_context)
    install_error_handlers(app)
    return app


def page_context():
    """What the shared layout needs on either host: Berth's main address, and where its
    stylesheet and scripts are (tool hosts reach them under the reserved /__berth/ prefix;
    their /static is the tool's)."""
    config = current_app.config
    on_tool_host = not is_main_host(request.host, config["BERTH_DOMAIN"])
    return {"static_prefix": "/__berth/static" if on_tool_host else "/static",
            "home_url": public_url(config, config["BERTH_DOMAIN"])}


# Berth's own pages load scripts, styles and images from their own host only, and may not be
# framed: a tool's page cannot overlay them (clickjacking). No form-action: a sign-in form's
# answer redirects on to a tool host or the identity provider, which form-action would block.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # for browsers older than frame-ancestors
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def add_page_headers(response):
    for name, value in PAGE_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def refuse_foreign_origin():
    """Refuse a browser's state-changing request that a page of another origin sent.

    Tools are served from sibling hosts, and their pages may plant cookies for the whole
    domain, the CSRF cookie included; the Origin header is the browser's own word and no page
    can forge it. Clients that are not browsers send none, and still need a CSRF token or an
    API token."""
    if request.method not in UNSAFE_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    expected = public_url(current_app.config, request.host.split(":", 1)[0].lower(), path="")
    if origin == expected:
        return None
    return Response(f"Berth refuses this request: it was sent by a page of {origin[:200]}, "
                    "not by Berth's own pages.\n", status=403, mimetype="text/plain")


class SignInBoundSessions(SecureCookieSessionInterface):
    """Flask's cookie session, with its CSRF seed taken from the platform sign-in, not the cookie.

    Flask-WTF signs session["csrf_token"] into every form's token and compares the two. Kept in
    the cookie, that seed could be planted: a tool's page may set cookies for the whole domain,
    its own signed cookie included. Here the seed is an HMAC of the sign-in that the auth
    service named (X-Berth-Session-Id, set by nginx only), so a form's token is good for one
    sign-in alone, whatever cookie comes with it. The cookie still carries flashed messages.
    """

    def open_session(self, app, request):
        session = super().open_session(app, request)
        if session is None:
            return None
        sign_in = request.headers.get("X-Berth-Session-Id", "")
        if sign_in.isdigit():
            seed = hmac.new(app.secret_key.encode(), b"csrf:" + sign_in.encode(), "sha256").hexdigest()
            dict.__setitem__(session, "csrf_token", seed)  # not a change to save in the cookie
        else:
            dict.pop(session, "csrf_token", None)  # never a seed that came in a cookie
        return session


def template_loader(*extra_dirs):
    """Jinja loader for a front door's templates, searched before the shared layout."""
    return ChoiceLoader([FileSystemLoader(d) for d in extra_dirs] + [FileSystemLoader(TEMPLATES)])


_CELL_START = re.compile(r"<td(?=[\s>])")


def label_cells(row, headers):
    """A table row's HTML with each cell labelled (data-label) by its column's header.

    On a narrow screen berth.css shows each row as a card and writes the label before each
    value. A header is its text, or (text, class); cells past the headers stay unlabelled.
    The row is already escaped markup, so "<td" in it can only be a cell's own tag."""
    labels = iter(header if isinstance(header, str) else header[0] for header in headers)

    def label(match):
        text = next(labels, "")
        return Markup('<td data-label="%s"') % escape(text) if text else match.group(0)

    return Markup(_CELL_START.sub(label, str(row)))


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
