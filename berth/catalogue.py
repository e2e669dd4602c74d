"""Load tool templates from YAML, all or nothing.

    tools:
      - slug: jupyterlab            # lower case, digits and hyphens; part of the tool's address
        name: JupyterLab
        description: Notebooks in Python
        backend: process            # process, docker or ecs
        command: ["{python}", "-m", "jupyterlab", "--port={port}"]   # placeholders: see below
        image: null                 # docker: the container image; ecs: the task definition
                                    # (family, family:revision or ARN)
        port: null                  # the port the tool listens on inside a container or task
        env: {KEY: value}           # placeholders are filled in here too
        health_path: /              # Berth waits until this answers below 500
        spawn_timeout: 120          # seconds until a launch that has not answered fails
        idle_timeout: 3600          # seconds without activity before the tool is stopped
        enabled: true
        api_tokens: false           # true: API clients may reach it with a Berth API token
        shared: false               # true: one instance for everyone, at <slug>.<domain>
        groups: [analysts]          # who may launch or open it; empty or absent: everyone
        identity_headers: false     # true: the tool gets X-Berth-User-Email, -Name and -Groups
        ip_allowlist: [10.0.0.0/8]  # CIDRs clients must come from; empty or absent: anywhere
        egress: false               # true: the tool may reach the network beyond Berth's host
        home: true                  # false: no home or team folders, a scratch folder instead
        sizes:                      # named sizes the user picks from; the first is the default
          - {name: small, cpu: 0.5, memory_mb: 1024}
          - {name: large, cpu: 2, memory_mb: 4096}

Placeholders in command and env values, filled in at launch (berth/backends/placeholders.py):
{port} and {ip}, the port and address the tool must listen on, on every backend; {home}, the
owner's home, on the process and docker backends; {python}, an interpreter the tool's user may
run, on the process backend only. Any other lower-case name in braces, or one the entry's
backend does not fill, is an error.

Every entry is checked before anything is written. Each error names the entry, the field and its line.
"""
import re

import yaml
from sqlalchemy import select

from berth.extensions import db
from berth.addresses import AddressError, parse_networks
from berth.hosts import slug_problem
from berth.models import Group, ToolTemplate, record_event
from berth.backends import BACKEND_NAMES
from berth.backends.placeholders import placeholder_problem


class CatalogueError(ValueError):
    """What is wrong, and (field) which entry field it is about, so a form can show it in place."""

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field
        self.problems = [(None, message)]  # (line or None, message) for each problem found

    def lines(self, path):
        """One line per problem, as compilers name a place: path:line: message."""
        return [f"{path}:{line}: {message}" if line else f"{path}: {message}" for line, message in self.problems]


def _top(field):
    """The entry field a sub-field's name belongs to: sizes[2].cpu is about sizes."""
    return re.split(r"[\[.]", field, maxsplit=1)[0]


def _text(value, field, required=False, maximum=300):
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise CatalogueError(f"{field} must be {'a non-empty' if required else 'a'} string", _top(field))
    if len(value) > maximum:
        raise CatalogueError(f"{field} is longer than {maximum} characters", _top(field))
    return value


def _integer(value, field, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogueError(f"{field} must be a whole number", _top(field))
    if not minimum <= value <= maximum:
        raise CatalogueError(f"{field} must be between {minimum} and {maximum}", _top(field))
    return value


def validate_entry(entry):
    """One catalogue entry (YAML's field names) to template fields; CatalogueError names the field.

    The one validator for the YAML catalogue and the admin pages' template form.
    """
    if not isinstance(entry, dict):
        raise CatalogueError("each entry must be a mapping of fields")
    known = {"slug", "name", "description", "backend", "command", "image", "port", "env",
             "health_path", "spawn_timeout", "idle_timeout", "enabled", "sizes", "api_tokens",
             "shared", "groups", "identity_headers", "ip_allowlist", "egress", "home"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CatalogueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})", unknown[0])
    slug = _text(entry.get("slug"), "slug", required=True, maximum=40)
    problem = slug_problem(slug)
    if problem:
        raise CatalogueError(f"slug {problem}", "slug")
    backend = entry.get("backend", "process")
    if backend not in BACKEND_NAMES:
        raise CatalogueError(f"backend must be one of: {', '.join(BACKEND_NAMES)}", "backend")
    command = entry.get("command", [])
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise CatalogueError("command must be a list of strings", "command")
    if backend == "process" and not command:
        raise CatalogueError("command is required for the process backend", "command")
    if backend == "docker" and not entry.get("image"):
        raise CatalogueError("image is required for the docker backend", "image")
    if backend == "ecs" and not entry.get("image"):
        raise CatalogueError("image is required for the ecs backend: the task definition's family, "
                             "family:revision or ARN", "image")
    env = entry.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                            and not isinstance(v, bool) for k, v in env.items()):
        raise CatalogueError("env must map names to strings or numbers", "env")
    texts = [(f"command[{position}]", part) for position, part in enumerate(command, start=1)]
    for field, text in texts + [(f"env.{key}", value) for key, value in env.items()]:
        problem = placeholder_problem(text, backend)
        if problem:
            raise CatalogueError(f"{field}: {problem}", _top(field))
    health_path = _text(entry.get("health_path", "/"), "health_path", required=True)
    if not health_path.startswith("/"):
        raise CatalogueError("health_path must start with /", "health_path")
    port = entry.get("port")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CatalogueError("enabled must be true or false", "enabled")
    flags = {}
    for field, default in (("api_tokens", False), ("shared", False), ("identity_headers", False),
                           ("egress", False), ("home", True)):
        flags[field] = entry.get(field, default)
        if not isinstance(flags[field], bool):
            raise CatalogueError(f"{field} must be true or false", field)
    groups = entry.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(name, str) and name.strip() and len(name) <= 200
                                               for name in groups):
        raise CatalogueError("groups must be a list of group names", "groups")
    try:
        allowlist = [str(network) for network in parse_networks(entry.get("ip_allowlist") or [])]
    except AddressError as error:
        raise CatalogueError(str(error), "ip_allowlist") from None
    return {
        "slug": slug,
        "name": _text(entry.get("name"), "name", required=True, maximum=200),
        "description": _text(entry.get("description", ""), "description", maximum=2000) or "",
        "backend": backend,
        "command": command,
        "image": _text(entry.get("image"), "image"),
        "port": None if port is None else _integer(port, "port", 1, 65535),
        "env": {key: str(value) for key, value in env.items()},
        "health_path": health_path,
        "spawn_timeout": _integer(entry.get("spawn_timeout", 60), "spawn_timeout", 1, 3600),
        "idle_timeout": _integer(entry.get("idle_timeout", 3600), "idle_timeout", 0, 30 * 86400),
        "enabled": enabled,
        "allow_api_tokens": flags["api_tokens"],
        "shared": flags["shared"],
        "identity_headers": flags["identity_headers"],
        "egress": flags["egress"],
        "home": flags["home"],
        "ip_allowlist": allowlist,
        "groups": sorted({name.strip() for name in groups}),
        "sizes": _sizes(entry.get("sizes", [])),
    }


def _sizes(value):
    if not isinstance(value, list):
        raise CatalogueError("sizes must be a list of {name, cpu, memory_mb}", "sizes")
    sizes, names = [], set()
    for position, size in enumerate(value, start=1):
        field = f"sizes[{position}]"
        if not isinstance(size, dict) or set(size) - {"name", "cpu", "memory_mb"}:
            raise CatalogueError(f"{field} must be a mapping with name, cpu and memory_mb", "sizes")
        name = _text(size.get("name"), f"{field}.name", required=True, maximum=40)
        if name in names:
            raise CatalogueError(f"{field}.name {name!r} appears twice", "sizes")
        names.add(name)
        cpu = size.get("cpu")
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 < cpu <= 64:
            raise CatalogueError(f"{field}.cpu must be a number of cores between 0 and 64", "sizes")
        sizes.append({"name": name, "cpu": cpu,
                      "memory_mb": _integer(size.get("memory_mb"), f"{field}.memory_mb", 16, 1024 * 1024)})
    return sizes


def parse_catalogue(text):
    """Validate a catalogue document and return a list of template field dicts.

    Every entry is checked: the CatalogueError lists each problem found (its problems: (line,
    message) pairs, line being where the entry or the faulty field starts, or None)."""
    try:
        document = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        raise CatalogueError(f"the file is not valid YAML: {error}") from None
    entries = document.get("tools") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise CatalogueError("the file must hold a list of tools under the key 'tools'")
    nodes = _entry_nodes(root)
    parsed, seen, problems = [], set(), []
    for index, entry in enumerate(entries, start=1):
        label = f"entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("slug"), str):
            label += f" ({entry['slug']})"
        node = nodes[index - 1] if index <= len(nodes) else None
        errors = _entry_errors(entry)
        if errors:
            problems += [(_line_of(node, error.field), f"{label}: {error}", error.field) for error in errors]
            if isinstance(entry, dict) and isinstance(entry.get("slug"), str):
                seen.add(entry["slug"])
            continue
        fields = validate_entry(entry)
        if fields["slug"] in seen:
            problems.append((_line_of(node, "slug"), f"{label}: slug {fields['slug']!r} appears twice", "slug"))
        seen.add(fields["slug"])
        parsed.append(fields)
    if problems:
        problems.sort(key=lambda problem: problem[0] or 0)  # in the file's order; unknown lines first
        error = CatalogueError("\n".join(message for _, message, _ in problems), problems[0][2])
        error.problems = [(line, message) for line, message, _ in problems]
        raise error
    return parsed


# What stands in for a faulty field that an entry cannot do without, to look for the next error.
_STAND_INS = {"slug": "x", "name": "x", "command": ["x"], "image": "x"}


def _entry_errors(entry):
    """Every field error in one entry: validate_entry names the first; with that field set right
    (or left out, for its default), it names the next, and so on."""
    errors, entry = [], entry
    while True:
        try:
            validate_entry(entry)
            return errors
        except CatalogueError as error:
            if any(error.field == earlier.field for earlier in errors):
                return errors
            errors.append(error)
            if error.field is None:
                return errors
            entry = {key: value for key, value in entry.items() if key != error.field}
            if error.field in _STAND_INS:
                entry[error.field] = _STAND_INS[error.field]


def _entry_nodes(root):
    """The YAML nodes of the entries, in order (under the key tools, or the document itself)."""
    if isinstance(root, yaml.MappingNode):
        root = next((value for key, value in root.value if key.value == "tools"), None)
    return list(root.value) if isinstance(root, yaml.SequenceNode) else []


def _line_of(node, field):
    """The line (from 1) where field starts in the entry's node, else where the entry starts."""
    if node is None:
        return None
    if isinstance(node, yaml.MappingNode) and field:
        for key, value in node.value:
            if key.value == field:
                return key.start_mark.line + 1
    return node.start_mark.line + 1


def load_catalogue(text, actor="cli"):
    """Upsert every template in the document, in one transaction. Returns (created, updated)."""
    entries = parse_catalogue(text)
    created = updated = 0
    for fields in entries:
        template = db.session.execute(
            select(ToolTemplate).where(ToolTemplate.slug == fields["slug"])
        ).scalar_one_or_none()
        if template is None:
            groups = groups_named(fields.pop("groups"))
            db.session.add(ToolTemplate(**fields, groups=groups))
            created += 1
        else:
            updated += bool(apply_fields(template, fields))
    record_event("catalogue.load", f"Catalogue loaded: {created} new, {updated} changed", actor=actor)
    db.session.commit()
    return created, updated


def apply_fields(template, fields):
    """Set validated fields (groups by name) on template. Returns {field: (before, after)} of what changed."""
    fields = dict(fields)
    changes = {}
    if "groups" in fields:
        groups = groups_named(fields.pop("groups"))
        before = [group.name for group in template.groups]
        if sorted(before) != sorted(group.name for group in groups):
            changes["groups"] = (before, sorted(group.name for group in groups))
            template.groups = groups
    for key, value in fields.items():
        if getattr(template, key) != value:
            changes[key] = (getattr(template, key), value)
            setattr(template, key, value)
    return changes


def groups_named(names):
    """The groups called names, creating the missing ones (single sign-on may fill them later)."""
    groups = []
    for name in names:
        group = db.session.execute(select(Group).where(Group.name == name)).scalar_one_or_none()
        if group is None:
            group = Group(name=name)
            db.session.add(group)
            db.session.flush()
        groups.append(group)
    return groups
