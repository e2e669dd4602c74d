"""The admin pages' forms. The template form's text areas become a catalogue entry, which the
catalogue's one validator (berth.catalogue.validate_entry) checks, field by field."""
import json
import re

from flask_wtf import FlaskForm
from wtforms import BooleanField, PasswordField, SelectField, StringField, TextAreaField

from berth.accounts import email_problem, email_taken, password_problem
from berth.catalogue import CatalogueError, validate_entry
from berth.backends import BACKEND_NAMES


class ActionForm(FlaskForm):
    """A button that changes something: CSRF token only."""


class GroupForm(FlaskForm):
    name = StringField("Name")


class MemberForm(FlaskForm):
    email = StringField("Email")


class UserForm(FlaskForm):
    """Add user: the password is optional (empty: Berth makes a temporary one, shown once)."""
    email = StringField("Email")
    name = StringField("Name")
    password = PasswordField("Password")
    is_admin = BooleanField("Administrator: may use these admin pages")

    @staticmethod
    def taken(email):
        return f"There is a user with the email {email} already."

    def account_fields(self):
        """(email, name, password or None) with each field's problems set on it; None if any."""
        email = (self.email.data or "").strip().lower()
        name = (self.name.data or "").strip()
        password = self.password.data or ""
        problems = {self.email: "Give the new user's email address." if not email else email_problem(email),
                    self.name: "A name has at most 200 characters." if len(name) > 200 else None,
                    self.password: password_problem(password) if password else None}
        if problems[self.email] is None and email_taken(email):
            problems[self.email] = self.taken(email)
        for field, problem in problems.items():
            if problem:
                field.errors = [problem]
        return None if any(problems.values()) else (email, name, password or None)


class HomeDeletionForm(FlaskForm):
    confirm = StringField("Type the user's email to confirm")


class TemplateForm(FlaskForm):
    slug = StringField("Slug")
    name = StringField("Name")
    description = TextAreaField("Description")
    # validate_entry names a backend that is not one of these, next to the other fields' errors.
    backend = SelectField("Backend", choices=[(name, name) for name in BACKEND_NAMES], default="process",
                          validate_choice=False)
    command = TextAreaField("Command")
    image = StringField("Image")
    port = StringField("Port")
    env = TextAreaField("Environment")
    health_path = StringField("Health path", default="/")
    spawn_timeout = StringField("Spawn timeout (seconds)", default="60")
    idle_timeout = StringField("Idle timeout (seconds)", default="3600")
    sizes = TextAreaField("Sizes")
    enabled = BooleanField("Enabled: listed in the catalogue", default=True)
    api_tokens = BooleanField("API clients may reach it with a Berth API token")
    shared = BooleanField("Shared: one instance for everyone allowed, at <slug>.<domain>")
    identity_headers = BooleanField("Send identity headers (X-Berth-User-Email, -Name, -Groups)")
    egress = BooleanField("May reach the network beyond Berth's host (never Berth itself or other tools)")
    home = BooleanField("Works in its user's home, with their team folders (off: a scratch folder only)",
                        default=True)
    groups = StringField("Groups")
    ip_allowlist = TextAreaField("IP allowlist")

    def fill_from(self, template):
        """Show a template's current values in the form's text fields."""
        self.slug.data = template.slug
        self.name.data = template.name
        self.description.data = template.description
        self.backend.data = template.backend
        self.command.data = "\n".join(template.command or [])
        self.image.data = template.image or ""
        self.port.data = "" if template.port is None else str(template.port)
        self.env.data = "\n".join(f"{key}={value}" for key, value in (template.env or {}).items())
        self.health_path.data = template.health_path
        self.spawn_timeout.data = str(template.spawn_timeout)
        self.idle_timeout.data = str(template.idle_timeout)
        self.sizes.data = "\n".join(f"{s['name']} {s['cpu']} {s['memory_mb']}" for s in template.sizes or [])
        self.enabled.data = template.enabled
        self.api_tokens.data = template.allow_api_tokens
        self.shared.data = template.shared
        self.identity_headers.data = template.identity_headers
        self.egress.data = template.egress
        self.home.data = template.home
        self.groups.data = ", ".join(group.name for group in template.groups)
        self.ip_allowlist.data = "\n".join(template.ip_allowlist or [])

    def template_fields(self, slug=None):
        """Validated template fields, or None with each problem added to its field's errors."""
        entry, problems = _entry(self, slug)
        fields, more = _validate(entry, set(problems))
        problems.update(more)
        for field, message in problems.items():
            shown_on = self[field if field in self else "slug"]
            shown_on.errors = [*shown_on.errors, message]  # a tuple until validate() runs
        return None if problems else fields


def _lines(text):
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _number(text):
    """A number typed in a text field; anything else goes to the validator as is, which names it."""
    text = (text or "").strip()
    if re.fullmatch(r"[+-]?\d{1,12}", text):
        return int(text)
    if re.fullmatch(r"[+-]?\d{0,12}\.\d{1,12}", text):
        return float(text)
    return text


def _entry(form, slug):
    """The form as a catalogue entry (YAML's field names), and problems found while reading it."""
    problems = {}
    entry = {
        "slug": slug if slug is not None else (form.slug.data or "").strip(),
        "name": (form.name.data or "").strip(),
        "description": (form.description.data or "").strip(),
        "backend": form.backend.data,
        "image": (form.image.data or "").strip() or None,
        "health_path": (form.health_path.data or "").strip(),
        "spawn_timeout": _number(form.spawn_timeout.data),
        "idle_timeout": _number(form.idle_timeout.data),
        "enabled": bool(form.enabled.data),
        "api_tokens": bool(form.api_tokens.data),
        "shared": bool(form.shared.data),
        "identity_headers": bool(form.identity_headers.data),
        "egress": bool(form.egress.data),
        "home": bool(form.home.data),
        "groups": [name.strip() for name in re.split(r"[,\n]", form.groups.data or "") if name.strip()],
        "ip_allowlist": _lines(form.ip_allowlist.data),
    }
    port = (form.port.data or "").strip()
    entry["port"] = _number(port) if port else None
    command = (form.command.data or "").strip()
    if command.startswith("["):
        try:
            entry["command"] = json.loads(command)
        except ValueError as error:
            problems["command"] = f"command is not a valid JSON list ({error.msg}); or write one argument per line"
    else:
        entry["command"] = _lines(command)
    env = {}
    for number, line in enumerate(_lines(form.env.data), start=1):
        key, equals, value = line.partition("=")
        if not equals or not key.strip():
            problems["env"] = f"env line {number} must read NAME=value"
            break
        env[key.strip()] = value.strip()
    entry["env"] = env
    sizes = []
    for number, line in enumerate(_lines(form.sizes.data), start=1):
        parts = line.split()
        if len(parts) != 3:
            problems["sizes"] = f"sizes line {number} must read: name CPUs memory_MB, such as small 0.5 1024"
            break
        sizes.append({"name": parts[0], "cpu": _number(parts[1]), "memory_mb": _number(parts[2])})
    entry["sizes"] = sizes
    return entry, problems


# Stand-ins for a field already known to be wrong, so that validation carries on to the next field.
_STAND_INS = {"slug": "stand-in", "name": "stand-in", "command": ["stand-in"], "image": "stand-in",
              "health_path": "/", "backend": "process", "spawn_timeout": 60, "idle_timeout": 3600}


def _validate(entry, known_bad):
    """validate_entry stops at the first problem: run it again past each one, to name them all."""
    entry = dict(entry)
    problems = {}
    for _ in range(len(entry) + 1):
        for field in known_bad | set(problems):
            if field in _STAND_INS:
                entry[field] = _STAND_INS[field]
            else:
                entry.pop(field, None)
        try:
            fields = validate_entry(entry)
        except CatalogueError as error:
            field = error.field or "slug"
            if field in problems:
                problems[field] += f"; {error}"
                return None, problems
            problems[field] = str(error)
            continue
        return (None if problems else fields), problems
    return None, problems
