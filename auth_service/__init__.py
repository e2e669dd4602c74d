"""The auth service: nginx asks it, for every request, who the user is and where the request goes.

Request path: nginx → auth_service (GET /auth/check, see check.py) → tool or webapp.
It also serves /auth/login and /auth/logout for local accounts, and single sign-on over
OpenID Connect under /auth/oidc/ (oidc.py). It reads users, sessions, API tokens and
instances; it writes sessions, users from single sign-on, and (throttled) last use and activity.
"""
import os

from flask import Flask, request

from webapp import template_loader

from webapp.config import load_settings
from webapp.extensions import csrf, db
from webapp.identity import require_proxy_secret


def create_app(test_config=None):
    app = Flask(__name__, static_folder=None)
    # The login pages extend the web app's base template, so both look the same.
    app.jinja_loader = template_loader(os.path.join(os.path.dirname(__file__), "templates"))
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
    csrf.init_app(app)

    from auth_service import check, login

    app.register_blueprint(login.bp)
    if app.config["BERTH_OIDC_ISSUER"]:
        # authlib and requests cost about 16 MB in every auth process: loaded only with single
        # sign-on. Without it, /auth/oidc/* is not found (404), as oidc.py's views answer then.
        from auth_service import oidc

        oidc.init_app(app)
        app.register_blueprint(oidc.bp)

    @app.before_request
    def only_through_nginx():
        # The liveness probe of an orchestrator reaches the service directly, and so does a
        # scraper of /metrics, which checks its own token or networks (webapp/metrics.py).
        if request.endpoint in ("healthz", "metrics"):
            return None
        return require_proxy_secret(app.config)

    @app.get("/auth/healthz")
    def healthz():
        return {"status": "ok"}

    # GET /auth/check, the hot path, is answered in front of Flask (see check.py), and timed
    # and counted for /metrics around that (webapp/metrics.py). GET /metrics on the service's
    # own port reports this container's counters; the web app reports the database gauges.
    from webapp import metrics

    metrics.init_app(app, database=False)
    app.wsgi_app = metrics.TimedAuthCheck(check.AuthCheck(app), web_upstream=check.WEB_UPSTREAM)
    return app
