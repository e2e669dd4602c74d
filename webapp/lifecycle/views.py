"""Tool-host pages, on any path of a tool host that is not running, and /__berth/ endpoints."""
import logging
from urllib.parse import urlencode

from flask import Blueprint, abort, current_app, g, jsonify, make_response, redirect, render_template, request
from flask_wtf import FlaskForm
from sqlalchemy import select

from berth.access import AccessRefused, check_open
from berth.backends import LaunchFailed, get_backend
from berth.database import RETRY_AFTER_SECONDS
from berth.extensions import db
from berth.hosts import (is_main_host, parse_tool_host, public_url, safe_relative_path, strip_port, tool_host,
                         tools_domain)
from berth.launch.requests import (
    LaunchRefused,
    instance_events,
    latest_instance,
    live_instance,
    mark_failure_shown,
    request_launch,
    request_stop,
)
from berth.models import State, ToolTemplate, User
from berth.web.errors import error_page, unavailable_page
from berth.web.launch_pass import is_navigation, own_navigation, pass_cookie_name, valid_launch_pass

log = logging.getLogger(__name__)

bp = Blueprint("lifecycle", __name__, url_prefix="/__berth")

# After a restart, the spawning page starts the tool again once the stop is done when its
# address has this fragment (a fragment never reaches a server; the page drops it first).
RESTART_FRAGMENT = "berth-restart"


def init_app(app):
    from berth.extensions import csrf

    csrf.exempt(forbidden)  # it only renders nginx's 403, for whatever method was refused
    csrf.exempt(unavailable)  # likewise nginx's 500 from the auth check

    @app.before_request
    def tool_host_pages():
        """Every path of a tool host that nginx sent here (not /__berth/...) is a lifecycle page."""
        if g.get("user") is None or is_main_host(request.host, app.config["BERTH_DOMAIN"]):
            return None
        if request.path.startswith("/__berth/"):
            return None
        return _lifecycle_page(request.headers.get("X-Berth-Page", ""))

    @app.errorhandler(401)
    def unauthorised(error):
        return error_page(401, "Sign-in needed", "Your session has ended. Sign in again.")

    @app.errorhandler(400)
    def bad_request(error):
        return error_page(400, "Bad request", error.description)

    @app.errorhandler(404)
    def not_found(error):
        return error_page(404, "Not found", "There is nothing at this address.")


def _tool_of_request():
    """The template, owner (None for a shared tool) and host named by the request's tool host.

    The host is the tool's address in the current form, which its instances and grants are
    kept under, also when the request came to its legacy address (<slug>-<host_key>).
    404 when there is no such tool; 403 when the user may not open it. The auth service already
    refused those; never trust one layer alone.
    """
    config = current_app.config
    parsed = parse_tool_host(request.host, tools_domain(config))
    if parsed is None:
        abort(404)
    template = db.session.execute(
        select(ToolTemplate).where(ToolTemplate.slug == parsed.slug)
    ).scalar_one_or_none()
    if template is None or template.shared != parsed.shared:
        abort(404)
    owner = None
    if not parsed.shared:
        named = User.host_key == parsed.host_key if parsed.legacy else User.address_name == parsed.address_name
        owner = db.session.execute(select(User).where(named)).scalar_one_or_none()
        if owner is None:
            abort(404)
    host = tool_host(template.slug, owner.address_name if owner else None, tools_domain(config))
    try:
        check_open(g.user, template, owner, host)
    except AccessRefused as refusal:
        abort(make_response(error_page(403, "No access", refusal.reason)))
    return template, owner, host


def _is_navigation():
    """Only a browser's top-level navigation may start a tool, never a tool's own background XHR."""
    return is_navigation(request.method, request.headers)


def _from_another_site(host):
    """A navigation that another site, or another tool's host, started: such a link must not
    start a tool by itself, the user confirms on Berth's own page first. The user's own, and one
    that came through the sign-in hand-off from their own, may (berth/web/launch_pass.py)."""
    if own_navigation(request.headers):
        return False
    return not valid_launch_pass(current_app.config["SECRET_KEY"], host,
                                 request.cookies.get(pass_cookie_name(current_app.config)))


def _lifecycle_page(page):
    if page == "moved":
        return _to_current_address()
    if page not in ("start", "spawning", "unavailable"):
        return error_page(404, "No such tool", f"There is no tool at {strip_port(request.host)}.")
    template, owner, host = _tool_of_request()
    context = {"template": template}

    if page == "start" and owner is not None and owner.id != g.user.id:
        page = "unavailable"  # the auth service says so too: only the owner starts a personal tool
    if page == "unavailable":
        return error_page(503, f"{template.name} is not running",
                           f"{owner.display_name} has shared this {template.name} with you, but it is not "
                           "running now. Only its owner can start it.")
    if page == "start":
        previous = latest_instance(host)
        if not _is_navigation():
            return _not_running_for_scripts(template, previous)
        if previous is not None and previous.state == State.FAILED and mark_failure_shown(previous):
            return render_template("failed.html", instance=previous, **context), 502
        if _from_another_site(strip_port(request.host)):
            path = safe_relative_path(request.full_path.rstrip("?")) or "/"
            return redirect(public_url(current_app.config, current_app.config["BERTH_DOMAIN"],
                                       f"/launch/{template.slug}?{urlencode({'next': path})}"), 303)
        try:
            # A shared tool is started by whoever opens it first, and keeps running for everyone.
            instance, _ = request_launch(template, owner or g.user, host, actor=f"user:{g.user.id}")
        except LaunchRefused as refusal:
            return error_page(refusal.status, f"{template.name} was not started", refusal.reason)
    else:
        instance = latest_instance(host)
        if not _is_navigation():
            return jsonify(error=f"{template.name} is starting.", state=instance.state), 503
    return _spawning_page(template, instance, request.full_path.rstrip("?"))


def _not_running_for_scripts(template, latest):
    """A script's request (fetch, XHR, an API client) never starts a tool; it is told why not."""
    return jsonify(error=f"{template.name} is not running. Open it in a browser to start it.",
                   state=latest.state if latest else None), 503


def _to_current_address():
    """A browser's navigation to a tool's legacy address goes on to the same path at its current
    one (the auth check sends only those here, once the user may open the tool). A temporary
    redirect: browsers keep no copy, so the old address answers for itself every time."""
    _, _, host = _tool_of_request()
    return redirect(public_url(current_app.config, host, request.full_path.rstrip("?")), 302)


def _spawning_page(template, instance, next_path):
    """The starting page. next_path, the tool's address it was opened at, is where it goes once
    the tool runs: its script follows the launch, and without JavaScript it reloads /progress."""
    return render_template("spawning.html", template=template, instance=instance, next_path=next_path,
                           events=instance_events(instance) if instance is not None else []), 202


@bp.get("/progress")
def progress():
    """The starting page for a browser without JavaScript, which reloads it every few seconds.
    It never launches anything: once the tool runs (or failed), it sends the browser on to the
    tool's address; a stopped tool is said to be stopped, with a link that starts it again."""
    if g.user is None:
        abort(401)
    template, owner, host = _tool_of_request()
    next_path = safe_relative_path(request.args.get("next", "/")) or "/"
    instance = latest_instance(host)
    if instance is not None and instance.state in (State.RUNNING, State.FAILED):
        return redirect(next_path, 303)
    return _spawning_page(template, instance, next_path)


@bp.get("/status")
def status():
    """The spawning page polls this. It never launches anything."""
    if g.user is None:
        abort(401)
    template, owner, host = _tool_of_request()
    instance = latest_instance(host)
    if instance is None:
        return jsonify(state=None, events=[])
    return jsonify(
        state=instance.state,
        step=instance.step,
        error=instance.error,
        events=[{"at": event.created_at.isoformat(), "message": event.message}
                for event in instance_events(instance)],
    )


@bp.route("/forbidden", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def forbidden():
    """nginx shows this (status 403) when the auth service refuses a request."""
    reason = request.headers.get("X-Berth-Reason") or "You do not have access to this address."
    return error_page(403, "No access", reason)


@bp.route("/unavailable", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
def unavailable():
    """nginx shows this (status 503) when the auth check could not answer: the database (or the
    auth service itself) is unreachable. It reads nothing from the database."""
    retry_after = request.headers.get("X-Berth-Retry-After", "")
    return unavailable_page(int(retry_after) if retry_after.isdigit() else RETRY_AFTER_SECONDS)


class RestartForm(FlaskForm):
    pass


def _may_restart(template, owner):
    """Who starts a tool may restart it: the owner of a personal one, anyone who may open a
    shared one (the caller checked that, with _tool_of_request)."""
    return owner is None or owner.id == g.user.id


@bp.get("/not-answering")
def not_answering():
    """nginx shows this (status 502) when a running tool refused or dropped the connection."""
    if g.user is None or not request.headers.get("X-Berth-Tool-Down"):
        abort(404)  # only nginx's error page comes here; the auth check refuses a client's header
    template, owner, host = _tool_of_request()
    message = f"{template.name} is not answering. It may have stopped unexpectedly."
    instance = live_instance(host)
    if instance is None or instance.state == State.STOPPING:
        # It stopped within the second for which nginx keeps the auth answer it had while the
        # tool ran (docs/decisions/0021-one-second-auth-cache.md). A moment later its address
        # leads to Berth's own pages again: the client is asked to come back then, and is told
        # what it is told after that second (503, not running).
        # Retry-After: 1 marks the answers of that second: the next one may differ.
        stopping = instance is not None
        if not _is_navigation():
            if stopping:
                response = jsonify(error=f"{template.name} is stopping.", state=instance.state)
                response.status_code = 503
            else:  # as the start page answers scripts (_lifecycle_page)
                response = make_response(_not_running_for_scripts(template, latest_instance(host)))
        else:
            response = make_response(error_page(
                503, f"{template.name} {'is stopping' if stopping else 'has stopped'}",
                f"{template.name} {'is stopping' if stopping else 'has just stopped'}. This page opens it again in a moment."))
            response.headers["Refresh"] = "1"
        response.headers["Retry-After"] = "1"
        return response
    if not _is_navigation():
        return jsonify(error=message), 502
    may_restart = instance.state == State.RUNNING and _may_restart(template, owner)
    if not may_restart:
        return error_page(502, f"{template.name} is not answering",
                           f"{message} Try again in a moment.")
    return render_template("not_answering.html", template=template, message=message,
                           restart_form=RestartForm()), 502


@bp.post("/restart")
def restart():
    """Stop the tool of this host, then open it again (spawning.js starts it once stopped)."""
    if g.user is None:
        abort(401)
    template, owner, host = _tool_of_request()
    if not _may_restart(template, owner):
        return error_page(403, "No access", f"Only its owner can restart this {template.name}.")
    instance = live_instance(host)
    if instance is not None and instance.state == State.RUNNING:
        if owner is None and _tool_alive(instance):
            # Users do not stop a shared tool that others use (the culler and administrators do):
            # only one that is gone.
            return redirect("/", 303)
        request_stop(instance, actor=f"user:{g.user.id}")
    return redirect(f"/#{RESTART_FRAGMENT}", 303)


def _tool_alive(instance):
    try:
        alive, _ = get_backend(instance.backend, current_app.config).is_alive(instance)
    except LaunchFailed:
        return False
    return alive
