"""JSON Schemas of the API's bodies: published in the OpenAPI document, and used to validate input.

One definition serves both, so the document cannot drift from what the views accept.
"""
import copy
import functools

from berth.hosts import SLUG_PATTERN
from berth.tokens import MAX_NAME_LENGTH, NAME_PATTERN, SCOPES

MAX_ID = 2**31 - 1  # ids are 32-bit integers in the database

_TIME = {"type": "string", "format": "date-time"}
_MAYBE_TIME = {"type": ["string", "null"], "format": "date-time"}

COMPONENTS = {
    "Error": {
        "type": "object",
        "description": "Every error answer. `error` says what went wrong, for people.",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    },
    "Size": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "cpu": {"type": "number"},
            "memory_mb": {"type": "integer"},
        },
        "required": ["name", "cpu", "memory_mb"],
    },
    "Tool": {
        "type": "object",
        "description": "A tool in the catalogue, with the address it has for the caller.",
        "properties": {
            "slug": {"type": "string"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "url": {"type": "string"},
            "sizes": {"type": "array", "items": {"$ref": "#/components/schemas/Size"}},
            "api_tokens": {"type": "boolean", "description": "Whether the tool's own address accepts "
                                                             "API tokens."},
            "shared": {"type": "boolean", "description": "One instance for everyone with access, at one "
                                                         "address, rather than one per person."},
        },
        "required": ["slug", "name", "description", "url", "sizes", "api_tokens", "shared"],
    },
    "Grant": {
        "type": "object",
        "description": "Access to your tool for one user or one group (the other field is null).",
        "properties": {
            "id": {"type": "integer"},
            "user": {"type": ["string", "null"], "description": "The user's email."},
            "group": {"type": ["string", "null"], "description": "The group's name."},
            "created_at": _TIME,
        },
        "required": ["id", "user", "group", "created_at"],
    },
    "Instance": {
        "type": "object",
        "description": "One launch of a tool. `state` moves QUEUED → SPAWNING → RUNNING → STOPPING → "
                       "STOPPED, or to FAILED with `error`.",
        "properties": {
            "id": {"type": "integer"},
            "tool": {"type": "string"},
            "tool_name": {"type": "string"},
            "owner_id": {"type": "integer"},
            "url": {"type": "string"},
            "state": {"type": "string", "enum": ["QUEUED", "SPAWNING", "RUNNING", "STOPPING", "STOPPED",
                                                 "FAILED"]},
            "size": {"oneOf": [{"$ref": "#/components/schemas/Size"}, {"type": "null"}]},
            "error": {"type": ["string", "null"]},
            "created_at": _TIME,
            "running_at": _MAYBE_TIME,
            "ended_at": _MAYBE_TIME,
            "last_activity_at": _MAYBE_TIME,
        },
        "required": ["id", "tool", "tool_name", "owner_id", "url", "state", "size", "error", "created_at",
                     "running_at", "ended_at", "last_activity_at"],
    },
    "Event": {
        "type": "object",
        "properties": {"at": _TIME, "kind": {"type": "string"}, "message": {"type": "string"}},
        "required": ["at", "kind", "message"],
    },
    "InstanceStatus": {
        "allOf": [
            {"$ref": "#/components/schemas/Instance"},
            {
                "type": "object",
                "properties": {
                    "step": {"type": "string"},
                    "events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                },
                "required": ["step", "events"],
            },
        ],
    },
    "Token": {
        "type": "object",
        "description": "A personal API token. The token itself is shown only once, at creation.",
        "properties": {
            "id": {"type": "integer"},
            "name": {"type": "string"},
            "prefix": {"type": "string", "description": "The token's first characters."},
            "created_at": _TIME,
            "expires_at": _TIME,
            "last_used_at": _MAYBE_TIME,
            "expired": {"type": "boolean"},
            "scope": {"type": "string", "enum": list(SCOPES),
                      "description": "read: looks only; launch: also launches, stops and shares tools and "
                                     "revokes tokens; admin: also the administration endpoints."},
        },
        "required": ["id", "name", "prefix", "created_at", "expires_at", "last_used_at", "expired", "scope"],
    },
    "NewToken": {
        "allOf": [
            {"$ref": "#/components/schemas/Token"},
            {
                "type": "object",
                "properties": {"token": {"type": "string", "description": "Send it as "
                                                                          "`Authorization: Bearer <token>`."}},
                "required": ["token"],
            },
        ],
    },
    "User": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "email": {"type": "string"},
            "name": {"type": "string"},
            "is_admin": {"type": "boolean"},
            "is_active": {"type": "boolean"},
            "single_sign_on": {"type": "boolean", "description": "Linked to the OpenID provider."},
            "groups": {"type": "array", "items": {"type": "string"}},
            "created_at": _TIME,
        },
        "required": ["id", "email", "name", "is_admin", "is_active", "single_sign_on", "groups",
                     "created_at"],
    },
    # -- request bodies ---------------------------------------------------------------------
    "LaunchRequest": {
        "type": "object",
        "properties": {
            "tool": {"type": "string", "pattern": SLUG_PATTERN.pattern, "maxLength": 40,
                     "description": "The tool's slug."},
            "size": {"type": "string", "minLength": 1, "maxLength": 40,
                     "description": "One of the tool's sizes; its first size by default."},
        },
        "required": ["tool"],
        "additionalProperties": False,
        "examples": [{"tool": "jupyterlab", "size": "small"}],
    },
    "GrantRequest": {
        "type": "object",
        "description": "Exactly one of user (an email) and group (a name).",
        "properties": {
            "user": {"type": "string", "minLength": 3, "maxLength": 320, "pattern": NAME_PATTERN.pattern,
                     "description": "The user's email."},
            "group": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": NAME_PATTERN.pattern,
                      "description": "The group's name."},
        },
        "oneOf": [{"required": ["user"]}, {"required": ["group"]}],
        "additionalProperties": False,
        "examples": [{"user": "ada@example.org"}, {"group": "research"}],
    },
    "TokenRequest": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
                     "pattern": NAME_PATTERN.pattern, "description": "Printable text."},
            "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 365,
                                "description": "30 if left out; at most the installation's "
                                               "BERTH_TOKEN_MAX_DAYS."},
            "scope": {"type": "string", "enum": list(SCOPES),
                      "description": "read if left out; admin for administrators only."},
        },
        "required": ["name"],
        "additionalProperties": False,
        "examples": [{"name": "laptop script", "expires_in_days": 30}],
    },
    "UserChange": {
        "type": "object",
        "properties": {
            "is_active": {"type": "boolean", "description": "false signs the user out everywhere at once."},
            "is_admin": {"type": "boolean"},
        },
        "additionalProperties": False,
        "minProperties": 1,
        "examples": [{"is_active": False}],
    },
}


def components(config):
    """The schemas, with the limits this installation's settings set."""
    schemas = copy.deepcopy(COMPONENTS)
    schemas["TokenRequest"]["properties"]["expires_in_days"]["maximum"] = config["BERTH_TOKEN_MAX_DAYS"]
    return schemas


@functools.lru_cache(maxsize=16)
def _validator(name, max_days):
    # jsonschema (with referencing, rpds and attrs, about 3 MB) is loaded by the first API request
    # with a body, not by every web process at start.
    from jsonschema import Draft202012Validator

    schemas = components({"BERTH_TOKEN_MAX_DAYS": max_days})
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}})


def body_errors(name, body, config):
    """What is wrong with body against the named request schema, as one sentence; None if nothing."""
    validator = _validator(name, config["BERTH_TOKEN_MAX_DAYS"])
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    error = errors[0]
    where = ".".join(str(part) for part in error.absolute_path)
    message = error.message if len(error.message) <= 200 else error.message[:200] + "…"
    return f"{where}: {message}" if where else message
