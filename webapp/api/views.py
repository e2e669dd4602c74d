"""The API's endpoints. Each parses its input, makes one service call, and answers JSON."""
from functools import wraps

from flask import Blueprint, current_app, g, jsonify, render_template, request
from sqlalchemy import select
from werkzeug.exceptions import BadRequest, HTTPException

from berth.access import AccessRefused, add_grant, grants_on, launchable_templates, may_launch, revoke_grant
from berth.accounts import groups_by_user, set_user_flags, user_groups
from webapp.api.docs import TOKEN_VARIABLE, reference
from webapp.api.openapi import document
from webapp.api.schemas import MAX_ID, body_errors
from berth.extensions import csrf, db
from berth.hosts import public_url, user_tool_host
from berth.launch.requests import LaunchRefused, instance_events, request_launch, request_stop
from berth.models import Grant, State, ToolInstance, ToolTemplate, User
from berth.tokens import (ADMIN, LAUNCH, MINTING_REFUSED, READ, SAFE_METHODS, TOKEN_REFUSALS, TokenError, api_refusal,
                          create_token, is_expired, read_only_refusal, revoke_token, scope_allows, user_tokens)

bp = Blueprint("api", __name__, url_prefix="/api")
csrf.exempt(bp)  # token clients carry no CSRF token; cookie clients are checked in authenticate()

DEFAULT_TOKEN_DAYS = 30


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@bp.errorhandler(ApiError)
def api_error(error):
    return jsonify(error=error.message), error.status


def init_app(app):
    """JSON for errors that happen before a view is chosen (unknown method). A bug's 500 is JSON
    too, from the lifecycle module's handler, which answers JSON to API requests."""

    def json_for_api(error):
        if not request.path.startswith("/api/"):
            return error
        response = jsonify(error=error.description)
        response.status_code = error.code
        if getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    app.register_error_handler(405, json_for_api)
    app.register_error_handler(415, json_for_api)
    app.add_url_rule("/__berth/not-allowed", "not_allowed", not_allowed)
    csrf.exempt(not_allowed)


def not_allowed():
    """nginx's own 405 (it refuses TRACE before routing), answered for the original address."""
    path = request.headers.get("X-Original-URI", "/").split("?", 1)[0]
    adapter = current_app.url_map.bind(request.host)
    try:
        allowed = sorted(adapter.allowed_methods(path)) if path.startswith("/api/") else []
    except HTTPException:
        allowed = []
    response = jsonify(error="This method is not allowed here.")
    response.status_code = 405
    if allowed:
        response.headers["Allow"] = ", ".join(allowed)
    return response


@bp.before_request
def authenticate():
    if g.user is None:
        raise ApiError(401, "Sign-in required: send Authorization: Bearer <API token>.")
    if g.get("via_token"):
        refusal = api_refusal(g.token.scope, request.method, request.path)  # as the door did
        if refusal is not None:
            raise ApiError(403, refusal)
    elif request.method not in SAFE_METHODS:
        csrf.protect()  # a browser's session cookie alone must not drive the API from another site


def admin_required(view):
    @wraps(view)
    def wrapped(*args, **kwargs):
        if not g.user.is_admin:
            raise ApiError(403, "Only administrators may use this endpoint.")
        if g.get("via_token") and not scope_allows(g.token.scope, ADMIN):
            raise ApiError(403, api_refusal(g.token.scope, "GET", "/api/admin/"))
        return view(*args, **kwargs)

    return wrapped


def launch_scope_required(view):
    """For a view that changes something: a read-only token may not, whatever its path."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.get("via_token") and not scope_allows(g.token.scope, LAUNCH):
            raise ApiError(403, read_only_refusal("launch, stop or share tools, or revoke tokens"))
        return view(*args, **kwargs)

    return wrapped


# -- input ----------------------------------------------------------------------------------

def _body(schema):
    if not request.is_json:
        raise ApiError(400, "Send a JSON object, with Content-Type: application/json.")
    try:
        body = request.get_json()
    except BadRequest:
        raise ApiError(400, "The body is not valid JSON.") from None
    problem = body_errors(schema, body, current_app.config)
    if problem:
        raise ApiError(400, f"Invalid body: {problem}")
    return body


def _query_int(name, default, low, high):
    raw = request.args.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be a whole number from {low} to {high}.")
    return int(raw)


def _query_choice(name, choices, default):
    value = request.args.get(name, default)
    if value not in choices:
        raise ApiError(400, f"{name} must be one of: {', '.join(choices)}.")
    return value


def _get(model, object_id, what):
    item = db.session.get(model, object_id) if 1 <= object_id <= MAX_ID else None
    if item is None:
        raise ApiError(404, f"There is no {what} {object_id}.")
    return item


def _own_instance(instance_id):
    """One of the user's personal tools. A shared tool belongs to everyone allowed it, not to
    whoever opened it first: it is not theirs to see here or to stop."""
    instance = _get(ToolInstance, instance_id, "instance")
    if instance.owner_id != g.user.id or instance.template.shared:
        raise ApiError(404, f"There is no instance {instance_id}.")
    return instance


# -- output ---------------------------------------------------------------------------------

def _time(value):
    return value.isoformat() if value is not None else None


def _tool_json(template, user):
    return {
        "slug": template.slug,
        "name": template.name,
        "description": template.description,
        "url": public_url(current_app.config, user_tool_host(current_app.config, template, user)),
        "sizes": template.sizes or [],
        "api_tokens": template.allow_api_tokens,
        "shared": template.shared,
    }


def _grant_json(grant):
    return {
        "id": grant.id,
        "user": grant.grantee if grant.group is None else None,  # an email, with an account or not yet
        "group": grant.group.name if grant.group is not None else None,
        "created_at": _time(grant.created_at),
    }


def _instance_json(instance):
    return {
        "id": instance.id,
        "tool": instance.template.slug,
        "tool_name": instance.template.name,
        "owner_id": instance.owner_id,
        "url": public_url(current_app.config, instance.host),
        "state": instance.state,
        "size": instance.size or None,
        "error": instance.error,
        "created_at": _time(instance.created_at),
        "running_at": _time(instance.running_at),
        "ended_at": _time(instance.ended_at),
        "last_activity_at": _time(instance.last_activity_at),
    }


def _token_json(token):
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": _time(token.created_at),
        "expires_at": _time(token.expires_at),
        "last_used_at": _time(token.last_used_at),
        "expired": is_expired(token),
        "scope": token.scope,
    }


def _user_json(user, groups=None):
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "is_admin": user.is_admin,
        "is_active": user.is_active,
        "single_sign_on": user.oidc_subject is not None,
        "groups": user_groups(user) if groups is None else groups,
        "created_at": _time(user.created_at),
    }


def _instances(query):
    state = _query_choice("state", ("all", "live", "ended"), "all")
    limit = _query_int("limit", 50, 1, 200)
    if state != "all":
        query = query.where(ToolInstance.state.in_(State.LIVE if state == "live" else State.ENDED))
    rows = db.session.execute(
        query.order_by(ToolInstance.created_at.desc(), ToolInstance.id.desc()).limit(limit)
    ).scalars().all()
    return jsonify(instances=[_instance_json(instance) for instance in rows])


def _stop(instance, actor):
    if not request_stop(instance, actor=actor):
        raise ApiError(409, f"Instance {instance.id} is {instance.state.lower()}, not running: "
                            "there is nothing to stop.")
    db.session.refresh(instance)
    return jsonify(_instance_json(instance)), 202


# -- the document ---------------------------------------------------------------------------

@bp.get("/openapi.json")
def openapi():
    return jsonify(document(current_app.config))


@bp.get("/docs")
def docs():
    """The API's reference for people, rendered from the same document as /api/openapi.json."""
    return render_template("api_docs.html", api=reference(document(current_app.config)),
                           token_variable=TOKEN_VARIABLE, token_refusals=TOKEN_REFUSALS)


# -- me, the catalogue, my instances --------------------------------------------------------

@bp.get("/me")
def me():
    return jsonify(_user_json(g.user))


@bp.get("/tools")
def tools():
    return jsonify(tools=[_tool_json(template, g.user) for template in launchable_templates(g.user)])


@bp.get("/instances")
def list_instances():
    personal = ToolInstance.template_id.in_(select(ToolTemplate.id).where(ToolTemplate.shared.is_(False)))
    return _instances(select(ToolInstance).where(ToolInstance.owner_id == g.user.id, personal))


@bp.post("/instances")
@launch_scope_required
def launch():
    body = _body("LaunchRequest")
    template = db.session.execute(
        select(ToolTemplate).where(ToolTemplate.slug == body["tool"], ToolTemplate.enabled.is_(True))
    ).scalar_one_or_none()
    if template is None:
        raise ApiError(404, f"There is no tool {body['tool']!r} in the catalogue.")
    if not may_launch(g.user, template):
        raise ApiError(403, f"You are not in a group that may use {template.name}.")
    size = body.get("size")
    if size is not None and size not in [choice["name"] for choice in template.sizes or []]:
        names = ", ".join(choice["name"] for choice in template.sizes or []) or "none"
        raise ApiError(404, f"{template.name} has no size {size!r} (sizes: {names}).")
    host = user_tool_host(current_app.config, template, g.user)
    try:
        instance, created = request_launch(template, g.user, host, actor=f"user:{g.user.id}",
                                           size_name=size)
    except LaunchRefused as refusal:
        raise ApiError(refusal.status, refusal.reason) from None
    if instance is None:  # another request launched and stopped it in between: rare
        raise ApiError(409, "The tool changed state while starting it. Try again.")
    return jsonify(_instance_json(instance)), 202 if created else 200


@bp.get("/instances/<int:instance_id>")
def instance_status(instance_id):
    instance = _own_instance(instance_id)
    events = [{"at": _time(event.created_at), "kind": event.kind, "message": event.message}
              for event in instance_events(instance)]
    return jsonify({**_instance_json(instance), "step": instance.step, "events": events})


@bp.post("/instances/<int:instance_id>/stop")
@launch_scope_required
def stop_instance(instance_id):
    return _stop(_own_instance(instance_id), actor=f"user:{g.user.id}")


# -- sharing my tools -----------------------------------------------------------------------

def _own_tool(slug):
    template = db.session.execute(select(ToolTemplate).where(ToolTemplate.slug == slug)).scalar_one_or_none()
    if template is None or not may_launch(g.user, template):
        raise ApiError(404, f"There is no tool {slug!r} in the catalogue.")
    if template.shared:
        raise ApiError(409, f"{template.name} is a shared tool: everyone allowed to use it has access.")
    return template, user_tool_host(current_app.config, template, g.user)


@bp.get("/tools/<slug>/grants")
def list_grants(slug):
    template, host = _own_tool(slug)
    return jsonify(grants=[_grant_json(grant) for grant in grants_on(host)])


@bp.post("/tools/<slug>/grants")
@launch_scope_required
def new_grant(slug):
    template, host = _own_tool(slug)
    body = _body("GrantRequest")
    try:
        grant = add_grant(g.user, template, host, actor=f"user:{g.user.id}",
                          email=body.get("user"), group_name=body.get("group"))
    except AccessRefused as refusal:
        db.session.rollback()
        raise ApiError(refusal.status, refusal.reason) from None
    db.session.commit()
    return jsonify(_grant_json(grant)), 201


@bp.delete("/tools/<slug>/grants/<int:grant_id>")
@launch_scope_required
def delete_grant(slug, grant_id):
    template, host = _own_tool(slug)
    grant = db.session.get(Grant, grant_id) if 1 <= grant_id <= MAX_ID else None
    if grant is None or grant.host != host or not revoke_grant(grant, actor=f"user:{g.user.id}"):
        raise ApiError(404, f"Your {template.name} has no grant {grant_id}.")
    db.session.commit()
    return "", 204


# -- my tokens ------------------------------------------------------------------------------

@bp.get("/tokens")
def list_tokens():
    return jsonify(tokens=[_token_json(token) for token in user_tokens(g.user)])


@bp.post("/tokens")
def new_token():
    if g.get("via_token"):
        raise ApiError(403, MINTING_REFUSED)  # only a signed-in browser session makes tokens
    body = _body("TokenRequest")
    max_days = current_app.config["BERTH_TOKEN_MAX_DAYS"]
    days = int(body.get("expires_in_days", min(DEFAULT_TOKEN_DAYS, max_days)))  # JSON allows 30.0
    try:
        token, value = create_token(g.user, body["name"], days, max_days, actor=f"user:{g.user.id}",
                                    scope=body.get("scope", READ))
    except TokenError as error:
        raise ApiError(400, str(error)) from None
    db.session.commit()
    return jsonify({**_token_json(token), "token": value}), 201


@bp.delete("/tokens/<int:token_id>")
@launch_scope_required
def delete_token(token_id):
    if not 1 <= token_id <= MAX_ID or not revoke_token(g.user, token_id, actor=f"user:{g.user.id}"):
        raise ApiError(404, f"You have no token {token_id}.")
    db.session.commit()
    return "", 204


# -- administration -------------------------------------------------------------------------

@bp.get("/admin/users")
@admin_required
def admin_users():
    limit = _query_int("limit", 100, 1, 500)
    users = db.session.execute(select(User).order_by(User.id).limit(limit)).scalars().all()
    groups = groups_by_user(users)
    return jsonify(users=[_user_json(user, groups=groups.get(user.id, [])) for user in users])


@bp.get("/admin/users/<int:user_id>")
@admin_required
def admin_user(user_id):
    return jsonify(_user_json(_get(User, user_id, "user")))


@bp.patch("/admin/users/<int:user_id>")
@admin_required
def admin_change_user(user_id):
    body = _body("UserChange")
    user = _get(User, user_id, "user")
    if user.id == g.user.id and False in (body.get("is_active"), body.get("is_admin")):
        raise ApiError(409, "You cannot deactivate your own account or give up your own administration.")
    set_user_flags(user, actor=f"admin:{g.user.id}", is_active=body.get("is_active"),
                   is_admin=body.get("is_admin"))
    db.session.commit()
    return jsonify(_user_json(user))


@bp.get("/admin/instances")
@admin_required
def admin_instances():
    return _instances(select(ToolInstance))


@bp.post("/admin/instances/<int:instance_id>/stop")
@admin_required
def admin_stop(instance_id):
    return _stop(_get(ToolInstance, instance_id, "instance"), actor=f"admin:{g.user.id}")
