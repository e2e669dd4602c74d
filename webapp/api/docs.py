"""/api/docs: the OpenAPI document (openapi.py) rendered as a plain page on the server.

Rendered here rather than by a JavaScript viewer in the browser: the page needs no script, so it
passes Berth's Content-Security-Policy (script-src 'self', no inline styles) unchanged, works
without JavaScript, and there is no third-party bundle to vendor and keep patched. It reads the
same document that /api/openapi.json serves, so the two cannot disagree.
"""
import json
import shlex

_REF_PREFIX = "#/components/schemas/"
_METHODS = ("get", "post", "put", "patch", "delete")
# Values for path parameters in the examples.
_EXAMPLE_PATH_VALUES = {"slug": "jupyterlab", "instance_id": "42", "grant_id": "7", "token_id": "3", "user_id": "5"}
TOKEN_VARIABLE = "BERTH_TOKEN"


def schema_name(schema):
    ref = schema.get("$ref", "")
    return ref[len(_REF_PREFIX):] if ref.startswith(_REF_PREFIX) else None


def type_text(schema):
    """A schema's type in a few words: "string", "integer or null", "array of Size", "Size"."""
    name = schema_name(schema)
    if name:
        return name
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(type_text(part) for part in schema.get("oneOf") or schema["anyOf"])
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    words = [f"array of {type_text(schema.get('items', {}))}" if k == "array" else k for k in kinds]
    text = " or ".join(words)
    if schema.get("format"):
        text += f" ({schema['format']})"
    return text


def _constraints(schema):
    notes = []
    if "enum" in schema:
        notes.append("one of " + ", ".join(str(value) for value in schema["enum"]))
    for key, words in (("minimum", "at least"), ("maximum", "at most"), ("minLength", "at least {} characters"),
                       ("maxLength", "at most {} characters"), ("default", "default")):
        if key in schema:
            notes.append(words.format(schema[key]) if "{}" in words else f"{words} {schema[key]}")
    return notes


def fields(schema, schemas):
    """The rows of an object schema, following $ref and allOf: (name, type, required, notes)."""
    name = schema_name(schema)
    if name:
        return fields(schemas[name], schemas)
    rows = []
    for part in schema.get("allOf", []):
        rows.extend(fields(part, schemas))
    required = set(schema.get("required", []))
    for field, spec in schema.get("properties", {}).items():
        notes = [spec["description"]] if spec.get("description") else []
        rows.append({"name": field, "type": type_text(spec), "ref": schema_name(spec) or schema_name(spec.get("items", {})),
                     "required": field in required, "notes": "; ".join(notes + _constraints(spec))})
    return rows


def curl(method, url, body=None):
    """The curl command for one call with a token from $BERTH_TOKEN."""
    parts = ["curl"]
    if method != "get":
        parts += ["-X", method.upper()]
    parts.append(f'-H "Authorization: Bearer ${TOKEN_VARIABLE}"')
    if body is not None:
        parts += ["-H", shlex.quote("Content-Type: application/json"), "-d", shlex.quote(json.dumps(body))]
    parts.append(shlex.quote(url))
    return " ".join(parts)


def _path_example(path):
    for name, value in _EXAMPLE_PATH_VALUES.items():
        path = path.replace("{" + name + "}", value)
    return path


def reference(document):
    """What the page shows, from the OpenAPI document: the operations by tag, and the schemas."""
    schemas = document["components"]["schemas"]
    base = document["servers"][0]["url"]
    by_tag = {tag["name"]: [] for tag in document.get("tags", [])}
    for path, item in document["paths"].items():
        for method in _METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            body_schema = ((operation.get("requestBody") or {}).get("content", {})
                           .get("application/json", {}).get("schema"))
            body_name = schema_name(body_schema) if body_schema else None
            example = (schemas[body_name].get("examples") or [None])[0] if body_name else None
            responses = []
            for status, answer in sorted(operation["responses"].items()):
                returned = (answer.get("content") or {}).get("application/json", {}).get("schema")
                responses.append({"status": status, "description": answer.get("description", ""),
                                  "type": type_text(returned) if returned else None,
                                  "ref": schema_name(returned) if returned else None})
            by_tag.setdefault(operation["tags"][0], []).append({
                "id": operation.get("operationId") or f"{method}-{path}",
                "method": method.upper(), "path": path, "summary": operation.get("summary", ""),
                "parameters": [{"name": parameter["name"], "in": parameter["in"], "type": type_text(parameter["schema"]),
                                "required": parameter.get("required", False),
                                "notes": "; ".join(([parameter["description"]] if parameter.get("description") else [])
                                                   + _constraints(parameter["schema"]))}
                               for parameter in operation.get("parameters", [])],
                "body": {"name": body_name, "fields": fields(body_schema, schemas),
                         "description": schemas[body_name].get("description", "")} if body_name else None,
                "responses": responses,
                "curl": curl(method, base + _path_example(path), example if body_name else None),
            })
    return {
        "title": document["info"]["title"], "description": document["info"].get("description", ""),
        "base": base, "tags": [(tag, operations) for tag, operations in by_tag.items() if operations],
        "schemas": [{"name": name, "description": schema.get("description", ""), "fields": fields(schema, schemas)}
                    for name, schema in schemas.items()],
    }
