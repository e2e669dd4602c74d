"""What a request that fails inside one of Berth's Flask apps gets: Berth's own page, or JSON
for API clients; never the framework's bare page or a traceback.

- The database unreachable, paused or too slow (berth/database.py bounds each wait), or the
  connection lost under the request: 503 "Temporarily unavailable" with Retry-After. Nothing
  was written; the pool connects again for the next request.
- Anything else (a bug): 500, logged with its traceback for the operator.

The web app's pages (webapp/) and the auth service's sign-in and hand-off pages
(auth_service/) both answer so; the auth check itself (auth_service/check.py) answers nginx
in front of Flask, and nginx shows this same page for its failures (/__berth/unavailable).
"""
import logging

from flask import g, jsonify, make_response, render_template, request
from sqlalchemy import exc

from berth.database import RETRY_AFTER_SECONDS
from berth.extensions import db

log = logging.getLogger(__name__)


def install_error_handlers(app):
    app.register_error_handler(500, internal_error)
    app.register_error_handler(exc.DBAPIError, database_error)
    app.register_error_handler(exc.OperationalError, database_unavailable)
    app.register_error_handler(exc.TimeoutError, database_unavailable)  # no pooled connection came


def internal_error(error):
    # Flask has logged an unhandled exception with its traceback (database_error logs its own).
    _roll_back()
    return error_page(500, "Something went wrong",
                      "Berth failed to answer this request. It has been logged; try again in a moment.")


def database_error(error):
    if error.connection_invalidated or isinstance(error, exc.InterfaceError):
        return database_unavailable(error)  # the connection was lost under the request
    log.error("Exception on %s [%s]", request.path, request.method, exc_info=error)
    return internal_error(error)


def database_unavailable(error):
    log.error("the database is unavailable: %s", str(getattr(error, "orig", None) or error).strip())
    _roll_back()
    return unavailable_page(RETRY_AFTER_SECONDS)


def unavailable_page(retry_after):
    response = make_response(error_page(
        503, "Temporarily unavailable",
        "Berth cannot reach its database just now. Nothing is lost: try again in a few seconds."))
    response.headers["Retry-After"] = str(retry_after)
    return response


def error_page(status, title, message):
    if wants_json():
        return jsonify(error=message), status
    return render_template("message.html", title=title, message=message), status


def wants_json():
    if request.path.startswith("/api/") or g.get("via_token"):
        return True  # API clients get JSON, whatever they accept
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "application/json"


def _roll_back():
    """End the request's failed transaction, so that the error page can still be rendered."""
    try:
        db.session.rollback()
    except exc.SQLAlchemyError:
        pass
