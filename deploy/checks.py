"""What `berth check` checks, and the one line an operator sees when a command fails.

Each check returns problems: lines that name the setting and say what is wrong. Nothing is
started; the database and Redis are only connected to, within a few seconds.
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_MISSING = "the database has no tables yet, or not the newest: run `berth db upgrade` first"
REDIS_TIMEOUT = 5  # seconds to connect to Redis and hear its answer


def database_problems(config, schema=True):
    """Whether the database answers, within BERTH_DATABASE_CONNECT_TIMEOUT, and (with schema)
    has the newest schema."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine
    from sqlalchemy.exc import SQLAlchemyError

    from berth.database import engine_options

    url = config["SQLALCHEMY_DATABASE_URI"]
    engine = create_engine(url, **engine_options(config, url))
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_heads()
    except SQLAlchemyError as error:
        return [database_unreachable(error)]
    finally:
        engine.dispose()
    head = ScriptDirectory(str(ROOT / "migrations")).get_heads()
    if schema and set(current) != set(head):
        return [f"BERTH_DATABASE_URL: {SCHEMA_MISSING}"]
    return []


def redis_problems(url):
    """Whether Redis answers at url within REDIS_TIMEOUT seconds ([] when no Redis is set)."""
    if not url:
        return []
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as error:
        return [f"BERTH_REDIS_URL: Redis does not answer ({_first_line(error)})"]
    finally:
        client.close()
    return []


def catalogue_problems(path):
    """Every problem in the catalogue at path, one line each with its file and line."""
    from berth.catalogue import CatalogueError, parse_catalogue

    if not path:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        return [f"BERTH_CATALOGUE={path}: cannot read it ({error.strerror})"]
    except UnicodeDecodeError:
        return [f"BERTH_CATALOGUE={path}: it is not UTF-8 text"]
    try:
        parse_catalogue(text)
    except CatalogueError as error:
        return [f"BERTH_CATALOGUE={line}" for line in error.lines(path)]
    return []


def database_unreachable(error):
    original = getattr(error, "orig", None) or error
    return f"BERTH_DATABASE_URL: the database does not answer ({_first_line(original)})"


def operator_message(error):
    """The one line to show for an error an operator can fix (a setting, the database or Redis
    out of reach, no schema yet); None for a fault of Berth's own, which keeps its traceback."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from berth.settings import SettingError

    if isinstance(error, SettingError):
        return str(error)
    if isinstance(error, DBAPIError) and _missing_table(error):
        return SCHEMA_MISSING
    if isinstance(error, OperationalError):
        return database_unreachable(error)
    try:
        import redis
    except ImportError:
        return None
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return f"BERTH_REDIS_URL: Redis does not answer ({_first_line(error)})"
    return None


def _missing_table(error):
    original = error.orig
    return (getattr(original, "sqlstate", None) == "42P01"  # PostgreSQL's undefined_table
            or "no such table" in str(original))             # SQLite's


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
