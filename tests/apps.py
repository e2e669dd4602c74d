"""The web app in process, for tests that need no stack: on the database its environment names."""
from contextlib import contextmanager

import flask_migrate

from berth.extensions import db
from webapp import create_app


@contextmanager
def migrated_app():
    """create_app() inside its app context, its database migrated; closed again afterwards."""
    app = create_app()
    with app.app_context():
        flask_migrate.upgrade()
        yield app
        db.session.remove()
        db.engine.dispose()
