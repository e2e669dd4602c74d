"""Load tool templates from YAML, all or nothing.

    tools:
      - slug: jupyterlab            # lower case, digits and hyphens; part of the tool's address
        name: JupyterLab
        description: Notebooks in Python
        backend: process            # process, docker or ecs
        command: ["{python}", "-m", "jupyterlab", "--port={port}"]
        image: null                 # docker: the container image; ecs: the task definition
                                    # (family, family:revision or ARN)
        port: null                  # the port the tool listens on inside a container or task
        env: {KEY: value}           # {port}, {python} and {home} are filled in
        health_path: /              # Berth waits until this answers below 500
        spawn_timeout: 120          # seconds until a launch that has not answered fails
        idle_timeout: 3600          # seconds without activity before the tool is stopped
        enabled: true
        api_tokens: false           # true: API clients may reach it with a Berth API token
        sizes:                      # named sizes the user picks from; the first is the default
          - {name: small, cpu: 0.5, memory_mb: 1024}
          - {name: large, cpu: 2, memory_mb: 4096}

Every entry is checked before anything is written. An error names the entry and the field.
"""
import yaml
from sqlalchemy import select

from webapp.extensions import db
from webapp.hosts import SLUG_PATTERN
from webapp.models import ToolTemplate, record_event
from webapp.spawners import BACKEND_NAMES


class CatalogueError(ValueError):
    pass


def _text(value, field, required=False, maximum=300):
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise CatalogueError(f"{field} must be {'a non-empty' if required else 'a'} string")
    if len(value) > maximum:
        raise CatalogueError(f"{field} is longer than {maximum} characters")
    return value


def _integer(value, field, minimum, maximum):
    if isinstance(value, bool) or not isinstance(value, int):
        raise CatalogueError(f"{field} must be a whole number")
    if not minimum <= value <= maximum:
        raise CatalogueError(f"{field} must be between {minimum} and {maximum}")
    return value


def _validate_entry(entry):
    if not isinstance(entry, dict):
        raise CatalogueError("each entry must be a mapping of fields")
    known = {"slug", "name", "description", "backend", "command", "image", "port", "env",
             "health_path", "spawn_timeout", "idle_timeout", "enabled", "sizes", "api_tokens"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise CatalogueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    slug = _text(entry.get("slug"), "slug", required=True, maximum=40)
    if not SLUG_PATTERN.match(slug):
        raise CatalogueError("slug must start with a letter and hold only a-z, 0-9 and single hyphens")
    backend = entry.get("backend", "process")
    if backend not in BACKEND_NAMES:
        raise CatalogueError(f"backend must be one of: {', '.join(BACKEND_NAMES)}")
    command = entry.get("command", [])
    if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
        raise CatalogueError("command must be a list of strings")
    if backend == "process" and not command:
        raise CatalogueError("command is required for the process backend")
    if backend == "docker" and not entry.get("image"):
        raise CatalogueError("image is required for the docker backend")
    if backend == "ecs" and not entry.get("image"):
        raise CatalogueError("image is required for the ecs backend: the task definition's family, "
                             "family:revision or ARN")
    env = entry.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, (str, int, float))
                                            and not isinstance(v, bool) for k, v in env.items()):
        raise CatalogueError("env must map names to strings or numbers")
    health_path = _text(entry.get("health_path", "/"), "health_path", required=True)
    if not health_path.startswith("/"):
        raise CatalogueError("health_path must start with /")
    port = entry.get("port")
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise CatalogueError("enabled must be true or false")
    api_tokens = entry.get("api_tokens", False)
    if not isinstance(api_tokens, bool):
        raise CatalogueError("api_tokens must be true or false")
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
        "allow_api_tokens": api_tokens,
        "sizes": _sizes(entry.get("sizes", [])),
    }


def _sizes(value):
    if not isinstance(value, list):
        raise CatalogueError("sizes must be a list of {name, cpu, memory_mb}")
    sizes, names = [], set()
    for position, size in enumerate(value, start=1):
        field = f"sizes[{position}]"
        if not isinstance(size, dict) or set(size) - {"name", "cpu", "memory_mb"}:
            raise CatalogueError(f"{field} must be a mapping with name, cpu and memory_mb")
        name = _text(size.get("name"), f"{field}.name", required=True, maximum=40)
        if name in names:
            raise CatalogueError(f"{field}.name {name!r} appears twice")
        names.add(name)
        cpu = size.get("cpu")
        if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not 0 < cpu <= 64:
            raise CatalogueError(f"{field}.cpu must be a number of cores between 0 and 64")
        sizes.append({"name": name, "cpu": cpu,
                      "memory_mb": _integer(size.get("memory_mb"), f"{field}.memory_mb", 16, 1024 * 1024)})
    return sizes


def parse_catalogue(text):
    """Validate a catalogue document and return a list of template field dicts."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise CatalogueError(f"the file is not valid YAML: {error}") from None
    entries = document.get("tools") if isinstance(document, dict) else document
    if not isinstance(entries, list):
        raise CatalogueError("the file must hold a list of tools under the key 'tools'")
    parsed, seen = [], set()
    for index, entry in enumerate(entries, start=1):
        label = f"entry {index}"
        if isinstance(entry, dict) and isinstance(entry.get("slug"), str):
            label += f" ({entry['slug']})"
        try:
            fields = _validate_entry(entry)
        except CatalogueError as error:
            raise CatalogueError(f"{label}: {error}") from None
        if fields["slug"] in seen:
            raise CatalogueError(f"{label}: slug {fields['slug']!r} appears twice")
        seen.add(fields["slug"])
        parsed.append(fields)
    return parsed


def load_catalogue(text, actor="cli"):
    """Upsert every template in the document, in one transaction. Returns (created, updated)."""
    entries = parse_catalogue(text)
    created = updated = 0
    for fields in entries:
        template = db.session.execute(
            select(ToolTemplate).where(ToolTemplate.slug == fields["slug"])
        ).scalar_one_or_none()
        if template is None:
            db.session.add(ToolTemplate(**fields))
            created += 1
        else:
            changed = {key: value for key, value in fields.items() if getattr(template, key) != value}
            for key, value in changed.items():
                setattr(template, key, value)
            updated += bool(changed)
    record_event("catalogue.load", f"Catalogue loaded: {created} new, {updated} changed", actor=actor)
    db.session.commit()
    return created, updated
