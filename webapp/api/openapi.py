"""The OpenAPI 3.1 document of the API, served at /api/openapi.json.

The request and response schemas come from schemas.py, which the views also validate against;
the tests run schemathesis against this document and the running API.
"""
from webapp.api.schemas import MAX_ID, components
from berth.hosts import SLUG_PATTERN, public_url


def _ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema, description):
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description):
    return _json(_ref("Error"), description)


def _list_of(key, name):
    return {"type": "object", "properties": {key: {"type": "array", "items": _ref(name)}}, "required": [key]}


# Every operation can answer these: no or a bad token (nginx), or a token used where it may not be.
_COMMON = {
    "401": _error("No valid session or API token; `error` says why (unknown, revoked or expired token, "
                  "or too many unknown tokens from this address)."),
    "403": _error("Not allowed: the token's scope does not cover this request, or not an administrator."),
}
_NOT_FOUND = {"404": _error("No such object, or not yours.")}
_BAD = {"400": _error("Invalid input; `error` names the field.")}


def _id(name, what):
    return {"name": name, "in": "path", "required": True, "description": f"The {what}'s id.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}}


_SLUG = {"name": "slug", "in": "path", "required": True, "description": "The tool's slug.",
         "schema": {"type": "string", "pattern": SLUG_PATTERN.pattern, "maxLength": 40}}
_TOOL_NOT_FOUND = {"404": _error("No such tool in your catalogue.")}

_LIMIT = {"name": "limit", "in": "query", "required": False, "description": "At most this many, newest first.",
          "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}
_STATE = {"name": "state", "in": "query", "required": False,
          "description": "live: queued, spawning, running or stopping; ended: stopped or failed.",
          "schema": {"type": "string", "enum": ["all", "live", "ended"], "default": "all"}}


def _operation(summary, responses, tags, parameters=(), body=None, operation_id=None):
    operation = {"summary": summary, "operationId": operation_id, "tags": tags,
                 "responses": {**responses, **_COMMON}}
    if parameters:
        operation["parameters"] = list(parameters)
    if body:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(body)}}}
    return operation


def document(config):
    base = public_url(config, config["BERTH_DOMAIN"], "/api")
    instance = _id("instance_id", "instance")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Berth API",
            "version": "1",
            "description": "Launch and manage your tools. Authenticate with a personal API token "
                           "(made on the Account page, or with POST /tokens from a signed-in browser "
                           "session: no token makes another) as `Authorization: Bearer <token>`. "
                           "A token's scope is read, launch or admin. "
                           "Every error answer is JSON: `{\"error\": \"...\"}`.",
        },
        "servers": [{"url": base}],
        "security": [{"bearerToken": []}],
        "tags": [{"name": "me"}, {"name": "tools"}, {"name": "sharing"}, {"name": "instances"}, {"name": "tokens"},
                 {"name": "admin"}],
        "paths": {
            "/me": {"get": _operation("Who the token belongs to", {"200": _json(_ref("User"), "You.")},
                                      ["me"], operation_id="getMe")},
            "/tools": {"get": _operation(
                "The catalogue", {"200": _json(_list_of("tools", "Tool"), "The tools you may launch.")},
                ["tools"], operation_id="listTools")},
            "/tools/{slug}/grants": {
                "get": _operation("Who else may open your tool", {
                    "200": _json(_list_of("grants", "Grant"), "Oldest first."), **_TOOL_NOT_FOUND,
                    "409": _error("A shared tool: it has no grants."),
                }, ["sharing"], [_SLUG], operation_id="listGrants"),
                "post": _operation("Share your tool with a user or a group", {
                    "201": _json(_ref("Grant"), "They may open it from their next request."),
                    **_BAD, "404": _error("No such tool, user or group."),
                    "409": _error("They have access already, or the tool is shared with everyone."),
                }, ["sharing"], [_SLUG], body="GrantRequest", operation_id="createGrant"),
            },
            "/tools/{slug}/grants/{grant_id}": {"delete": _operation("Stop sharing your tool with them", {
                "204": {"description": "Revoked: refused from their next request, including a new "
                                       "WebSocket handshake."},
                "404": _error("No such tool or grant."),
                "409": _error("A shared tool: it has no grants."),
            }, ["sharing"], [_SLUG, _id("grant_id", "grant")], operation_id="revokeGrant")},
            "/instances": {
                "get": _operation("Your instances", {
                    "200": _json(_list_of("instances", "Instance"), "Newest first."), **_BAD,
                }, ["instances"], [_STATE, _LIMIT], operation_id="listInstances"),
                "post": _operation("Start a tool", {
                    "202": _json(_ref("Instance"), "A new launch was queued; poll its status."),
                    "200": _json(_ref("Instance"), "The tool was live already: its instance."),
                    **_BAD,
                    "404": _error("No such tool, or no such size for it."),
                    "409": _error("The tool changed state meanwhile; try again."),
                    "429": _error("Too many tools are running (per person or in all)."),
                }, ["instances"], body="LaunchRequest", operation_id="startInstance"),
            },
            "/instances/{instance_id}": {"get": _operation("An instance's status and events", {
                "200": _json(_ref("InstanceStatus"), "The instance, its launch step and events."),
                **_NOT_FOUND,
            }, ["instances"], [instance], operation_id="getInstance")},
            "/instances/{instance_id}/stop": {"post": _operation("Stop an instance", {
                "202": _json(_ref("Instance"), "Stopping."),
                **_NOT_FOUND,
                "409": _error("The instance is not live."),
            }, ["instances"], [instance], operation_id="stopInstance")},
            "/tokens": {
                "get": _operation("Your API tokens", {
                    "200": _json(_list_of("tokens", "Token"), "Tokens not revoked, newest first."),
                }, ["tokens"], operation_id="listTokens"),
                "post": _operation("Create an API token (a signed-in browser session only)", {
                    "201": _json(_ref("NewToken"), "The token: shown this once only."), **_BAD,
                }, ["tokens"], body="TokenRequest", operation_id="createToken"),
            },
            "/tokens/{token_id}": {"delete": _operation("Revoke an API token", {
                "204": {"description": "Revoked: refused from the next request on."}, **_NOT_FOUND,
            }, ["tokens"], [_id("token_id", "token")], operation_id="revokeToken")},
            "/admin/users": {"get": _operation("All users (administrators)", {
                "200": _json(_list_of("users", "User"), "By id."), **_BAD,
            }, ["admin"], [{**_LIMIT, "description": "At most this many, by id.",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}}],
                operation_id="listUsers")},
            "/admin/users/{user_id}": {
                "get": _operation("A user (administrators)", {"200": _json(_ref("User"), "The user."),
                                                              **_NOT_FOUND},
                                  ["admin"], [_id("user_id", "user")], operation_id="getUser"),
                "patch": _operation("Activate, deactivate, grant or take administration (administrators)", {
                    "200": _json(_ref("User"), "The user, changed. Deactivation ends their sessions."),
                    **_BAD, **_NOT_FOUND,
                    "409": _error("You cannot deactivate yourself or give up your own administration."),
                }, ["admin"], [_id("user_id", "user")], body="UserChange", operation_id="changeUser"),
            },
            "/admin/instances": {"get": _operation("Everyone's instances (administrators)", {
                "200": _json(_list_of("instances", "Instance"), "Newest first."), **_BAD,
            }, ["admin"], [_STATE, _LIMIT], operation_id="listAllInstances")},
            "/admin/instances/{instance_id}/stop": {"post": _operation("Stop anyone's instance (administrators)", {
                "202": _json(_ref("Instance"), "Stopping."), **_NOT_FOUND,
                "409": _error("The instance is not live."),
            }, ["admin"], [instance], operation_id="adminStopInstance")},
        },
        "components": {
            "schemas": components(config),
            "securitySchemes": {"bearerToken": {
                "type": "http", "scheme": "bearer",
                "description": "A personal API token, `berth_` and 43 characters.",
            }},
        },
    }
