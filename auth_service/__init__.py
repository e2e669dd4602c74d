"""The auth service: nginx asks it, for every request, who the user is and where the request goes.

Request path: nginx → auth_service (GET /auth/check, see check.py) → tool or webapp.
It depends on the core (berth/) and never on the web app.
It also serves /auth/login and /auth/logout for local accounts, single sign-on over
OpenID Connect under /auth/oidc/ (oidc.py), and the sign-in hand-off to tool hosts
(/auth/handoff on the main host, /__berth/handoff on tool hosts; handoff.py). It reads users, sessions, API tokens and
instances; it writes sessions, users from single sign-on, and (throttled) last use and activity.
"""
import os

from flask import request

# At the top, not in create_app: granian's supervisor imports them once, and its workers share
# them (deploy/granian_preloaded.py).
from auth_service import check, handoff, login
from berth import metrics
from berth.logs import RequestIds, configure as configure_logging
from berth.web import create_base_app, require_proxy_secret


def create_app(test_config=None):
    # The login pages extend the shared layout (berth/web/templates/base.html).
    app = create_base_app(__name__, test_config,
                          template_dirs=[os.path.join(os.path.dirname(__file__), "templates")])

    app.register_blueprint(login.bp)
    app.register_blueprint(handoff.bp)
    if app.config["BERTH_OIDC_ISSUER"]:
        # authlib and requests cost about 16 MB in every auth process: loaded only with single
        # sign-on. Without it, /auth/oidc/* is not found (404), as oidc.py's views answer then.
        from auth_service import oidc

        oidc.init_app(app)
        app.register_blueprint(oidc.bp)

    @app.before_request
    def only_through_nginx():
        # The liveness probe of an orchestrator reaches the service directly, and so does a
        # scraper of /metrics, which checks its own token or networks (berth/metrics.py).
        if request.endpoint in ("healthz", "metrics"):
            return None
        return require_proxy_secret(app.config)

    @app.get("/auth/healthz")
    def healthz():
        return {"status": "ok"}

    # GET /auth/check, the hot path, is answered in front of Flask (see check.py), and timed
    # and counted for /metrics around that (berth/metrics.py). GET /metrics on the service's
    # own port reports this container's counters; the web app reports the database gauges.
    metrics.init_app(app, database=False)
    app.wsgi_app = RequestIds(metrics.TimedAuthCheck(check.AuthCheck(app), web_upstream=check.WEB_UPSTREAM))
    return app


def create_server_app():
    """create_app for a server process (granian, gunicorn), with Berth's log lines (berth/logs.py)."""
    configure_logging("auth")
    return create_app()
