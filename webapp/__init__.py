"""The web app, the front door for people: catalogue, the starting and error pages of tools,
sharing, account, admin pages and the JSON API.

Request path: nginx → auth_service answers → webapp, with the user named in headers that
nginx sets from the auth answer. Launch path: webapp (lifecycle, catalogue, api) →
berth.launch.requests → berth.launch.tasks → berth.backends → database. The domain itself
(models, settings, access rules, the launch state machine) is the core package, berth/.
"""
import os

from werkzeug.middleware.proxy_fix import ProxyFix

from berth.extensions import db
from berth.logs import RequestIds, configure as configure_logging, log_requests
from berth.web import SignInBoundSessions, create_base_app


def create_app(test_config=None):
    app = create_base_app(__name__, test_config,
                          template_dirs=[os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")])
    app.session_interface = SignInBoundSessions()
    # nginx is in front (plus BERTH_TRUSTED_HOPS proxies before it): trust exactly that many.
    hops = 1 + app.config["BERTH_TRUSTED_HOPS"]
    app.wsgi_app = RequestIds(ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0))
    log_requests(app)

    from berth import metrics
    from berth.launch.tasks import huey
    from webapp import identity
    from webapp.account import views as account
    from webapp.admin import views as admin
    from webapp.api import views as api
    from webapp.catalogue import views as catalogue
    from webapp.lifecycle import views as lifecycle
    from webapp.sharing import views as sharing

    identity.init_app(app)
    metrics.init_app(app, queue=huey)
    app.register_blueprint(catalogue.bp)
    app.register_blueprint(account.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(sharing.bp)
    app.register_blueprint(api.bp)
    api.init_app(app)
    app.register_blueprint(lifecycle.bp)
    lifecycle.init_app(app)

    @app.get("/healthz")
    def healthz():
        db.session.execute(db.select(1))
        return {"status": "ok"}

    return app


def create_server_app():
    """create_app for a server process (granian), with Berth's log lines (berth/logs.py)."""
    configure_logging("web")
    return create_app()
