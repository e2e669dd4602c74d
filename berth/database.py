"""Bounded waits on the database, so that a request is answered within seconds (503,
temporarily unavailable) whether the database is slow, paused or gone.

- Connecting waits at most BERTH_DATABASE_CONNECT_TIMEOUT (libpq's connect_timeout).
- A statement runs at most BERTH_DATABASE_STATEMENT_TIMEOUT: PostgreSQL's statement_timeout
  cancels a slow one, and, because a server that is paused or cut off never cancels anything,
  the client gives up on any wait for the server after as long (bounded_connection_class). SQLite
  waits as long for a lock (its busy timeout).
- A thread that has just given up waiting on the server does not then wait again to connect
  (the pool's pre-ping and the auth check reconnect once): it fails at once for as long as a
  statement may run, so that the waits do not add up.

The web app's engine (create_base_app, through engine_options and bound_engine) and the auth
check's own connections (auth_service/check.py, through connect) share these rules.
Migrations are not bound (unbounded): a schema change may take long.
"""
import contextlib
import functools
import os
import threading
import time

from sqlalchemy import event

# What a 503 for an unreachable database tells clients (Retry-After): a restart takes about as long.
RETRY_AFTER_SECONDS = 5
_CLIENT_MARGIN = 0.25  # the server's own cancel, which leaves the connection usable, comes first
_gave_up = threading.local()


@functools.cache
def bounded_connection_class():
    """psycopg's Connection, waiting for the server at most wait_limit seconds per operation.

    On running out it closes the connection (its state is unknown) and raises ConnectionTimeout,
    an OperationalError, which SQLAlchemy treats as a lost connection. (Made on first use:
    psycopg costs memory in every process, and SQLite installations never need it.)"""
    import psycopg
    from psycopg import errors

    class BoundedConnection(psycopg.Connection):
        wait_limit = None

        def wait(self, gen, *args, timeout=None, **kwargs):
            limit = timeout if timeout is not None else self.wait_limit
            try:
                return super().wait(gen, *args, timeout=limit, **kwargs)
            except errors._WaitTimeout:  # psycopg's documented signal for wait(timeout=...)
                self.pgconn.finish()
                _gave_up.at = time.monotonic()
                raise errors.ConnectionTimeout(f"the database did not answer within {limit:g} s") from None

    return BoundedConnection


def connect_arguments(config, dialect_name, url_options=None):
    """The DBAPI connect() arguments that bound the waits, for this dialect."""
    statement = config["BERTH_DATABASE_STATEMENT_TIMEOUT"]
    if dialect_name == "sqlite":
        return {"timeout": float(statement)}
    if dialect_name == "postgresql":
        options = f"-c statement_timeout={statement * 1000}"
        return {"connect_timeout": config["BERTH_DATABASE_CONNECT_TIMEOUT"],
                "options": f"{url_options} {options}" if url_options else options}
    return {}


def make_sqlite_folder(url):
    """Create the folder of a SQLite database if it is missing: SQLite creates the file, not its
    folder. Only its owner may enter it (the data directory is open to tools' users)."""
    from sqlalchemy.engine import make_url

    url = make_url(url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        try:
            os.makedirs(os.path.dirname(os.path.abspath(url.database)), mode=0o700, exist_ok=True)
        except OSError:
            pass  # SQLite's own error, naming the file, says it better


def engine_options(config, url):
    """SQLALCHEMY_ENGINE_OPTIONS for the database at url (a SQLAlchemy URL or its text)."""
    from sqlalchemy.engine import make_url

    url = make_url(url)
    return {"pool_pre_ping": True,  # a connection the server dropped is replaced, not used
            "connect_args": connect_arguments(config, url.get_backend_name(), url.query.get("options"))}


def connect(dialect, cargs, cparams, config):
    """A new DBAPI connection for dialect, bounded as above; None to let the dialect connect."""
    statement = config["BERTH_DATABASE_STATEMENT_TIMEOUT"]
    since = getattr(_gave_up, "at", None)
    if since is not None and time.monotonic() - since < statement:
        raise dialect.loaded_dbapi.OperationalError(
            "the database did not answer a moment ago; not waiting on it again yet")
    if dialect.driver != "psycopg":
        return None
    from psycopg import errors

    try:
        connection = bounded_connection_class().connect(*cargs, **cparams)
    except errors.ConnectionTimeout:
        _gave_up.at = time.monotonic()
        raise
    connection.wait_limit = statement + _CLIENT_MARGIN
    return connection


def bound_engine(engine, config):
    """Make engine's new connections bounded ones (and SQLite's write-ahead-logged)."""
    @event.listens_for(engine, "do_connect")
    def bounded_connect(dialect, connection_record, cargs, cparams):
        return connect(dialect, cargs, cparams, config)

    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", write_ahead_log)


def write_ahead_log(dbapi_connection, _connection_record):
    """Keep a SQLite database in write-ahead-log mode. Readers (the auth check, pages) and a
    writer (a launch recording its steps) then no longer wait for one another, and a commit
    writes the log once, not a journal and then the database. Commits stay as durable
    (synchronous stays FULL). The mode belongs to the file: the first connection switches it,
    later ones find it so. An in-memory database keeps its own mode."""
    dbapi_connection.execute("PRAGMA journal_mode=WAL").close()


@contextlib.contextmanager
def unbounded(connection):
    """Lift the bounds on a SQLAlchemy connection for a migration, whose steps may take long.

    The connection is discarded afterwards, so that the pool never hands it out unbounded."""
    if connection.dialect.name != "postgresql":
        yield connection
        return
    connection.exec_driver_sql("SET statement_timeout = 0")
    connection.commit()
    dbapi_connection = connection.connection.dbapi_connection
    if hasattr(dbapi_connection, "wait_limit"):
        dbapi_connection.wait_limit = None
    try:
        yield connection
    finally:
        connection.invalidate()
