"""The web app: catalogue, the starting and error pages of tools, and (later) sharing and admin.

Request path: nginx → auth_service answers → webapp, with the user named in headers that
nginx sets from the auth answer. Launch path: webapp (lifecycle) → tasks → launcher →
spawners → database. The web app owns the schema (models.py, migrations/).
"""
from flask import Flask
from jinja2 import ChoiceLoader, FileSystemLoader
from werkzeug.middleware.proxy_fix import ProxyFix

from webapp.config import load_settings
from webapp.extensions import csrf, db, migrate


def create_app(test_config=None):
    app = Flask(__name__, static_folder=None)
    app.config.update(load_settings())
    app.config.update(
        SESSION_COOKIE_NAME="berth_csrf",  # Flask's cookie only carries the CSRF token
        SESSION_COOKIE_SAMESITE="Lax",
        WTF_CSRF_TIME_LIMIT=None,
    )
    if test_config:
        app.config.update(test_config)
    app.config["SESSION_COOKIE_SECURE"] = app.config["BERTH_SCHEME"] == "https"
    # nginx is in front (plus BERTH_TRUSTED_HOPS proxies before it): trust exactly that many.
    hops = 1 + app.config["BERTH_TRUSTED_HOPS"]
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=0)

    db.init_app(app)
    migrate.init_app(app, db, directory=_migrations_dir())
    csrf.init_app(app)

    from webapp import identity, metrics
    from webapp.account import views as account
    from webapp.admin import views as admin
    from webapp.api import views as api
    from webapp.catalogue import views as catalogue
    from webapp.lifecycle import views as lifecycle
    from webapp.sharing import views as sharing

    identity.init_app(app)
    metrics.init_app(app)
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


def _migrations_dir():
    import os

    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "migrations")


def template_loader(*extra_dirs):
    """Jinja loader for the web app's templates, with extra folders searched first."""
    import os

    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
    return ChoiceLoader([FileSystemLoader(d) for d in extra_dirs] + [FileSystemLoader(here)])
