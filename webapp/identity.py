"""Who the user is, as nginx tells the web app. The web app has no login of its own.

nginx sets X-Berth-User-Id from the auth service's answer and overwrites any copy a client
sent. It also sends the proxy secret, so a request that bypassed nginx is refused.
"""
from functools import wraps

from flask import abort, current_app, g, request

from berth.extensions import db
from berth.hosts import is_main_host
from berth.models import User
from berth.tokens import bearer_token, live_token
from berth.web import require_proxy_secret

# Answered without the proxy secret: the orchestrator's probe, and /metrics, which a scraper
# may reach directly at the pod's port and which checks its own token or networks
# (berth/metrics.py access_refused).
OPEN_ENDPOINTS = {"healthz", "metrics"}


def init_app(app):
    @app.before_request
    def load_user():
        g.user = None
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        refused = require_proxy_secret(current_app.config)
        if refused is not None:
            return refused
        user_id = request.headers.get("X-Berth-User-Id", "")
        # The auth service answered for an API token (not the cookie) when the request has one.
        value = bearer_token(request.headers.get("Authorization"))
        g.via_token = value is not None
        g.token = None
        if g.via_token and is_main_host(request.host, current_app.config["BERTH_DOMAIN"]) \
                and not request.path.startswith("/api/"):
            return None  # tokens reach only the API; the auth service refused this already
        if not user_id.isdigit():
            return None
        if g.via_token:
            # Checked again here, for its scope: the token must still be good, and the user's.
            g.token = live_token(value, user_id=int(user_id))
            if g.token is None:
                return None
        user = db.session.get(User, int(user_id))
        g.user = user if user is not None and user.is_active else None
        return None

    @app.context_processor
    def signed_in_user():
        return {"current_user": g.get("user")}  # the layout's static_prefix and home_url: berth/web


def login_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            abort(401)
        return view(*args, **kwargs)

    return wrapped
