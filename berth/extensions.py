"""Extensions, created unbound here and bound in each app factory with init_app."""
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect


class LazyMigrate:
    """Flask-Migrate, imported only when a migration runs.

    Importing flask_migrate brings in Alembic and Mako: about 11 MB in every auth, web and
    worker process, which never migrate. init_app records the arguments; Flask-Migrate itself
    is bound to the app the first time app.extensions["migrate"] is used (flask_migrate.upgrade()
    in deploy/local.py and the tests), or by bind() (the `berth` CLI, for its `db` commands).
    """

    def init_app(self, app, db, directory):
        app.extensions["migrate"] = _PendingMigrate(app, db, directory)

    @staticmethod
    def bind(app):
        pending = app.extensions.get("migrate")
        if isinstance(pending, _PendingMigrate):
            pending.bind()


class _PendingMigrate:
    def __init__(self, app, db, directory):
        self._app, self._db, self._directory = app, db, directory

    def bind(self):
        from flask_migrate import Migrate

        # Replaces this object in app.extensions with Flask-Migrate's own, and adds `db` to app.cli.
        Migrate(self._app, self._db, directory=self._directory)
        return self._app.extensions["migrate"]

    def __getattr__(self, name):  # .db, .directory, .migrate, .configure_args: bind, then delegate
        return getattr(self.bind(), name)


db = SQLAlchemy()
migrate = LazyMigrate()
csrf = CSRFProtect()
