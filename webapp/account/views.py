"""Account pages: list and end sessions, create, list and revoke personal API tokens."""
import re
from datetime import datetime

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session
from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from berth.accounts import end_other_sessions, end_session, user_sessions
from berth.extensions import db
from webapp.identity import login_required
from berth.models import hash_token, utcnow
from berth.tokens import (ADMIN, MAX_NAME_LENGTH, READ, SCOPE_NAMES, SCOPES, TokenError, create_token, revoke_token,
                          user_tokens)

bp = Blueprint("account", __name__, url_prefix="/account")

_NEW_TOKEN = "berth_new_token"
LIFETIMES = (7, 30, 90, 365)  # days offered in the form, up to BERTH_TOKEN_MAX_DAYS


class ActionForm(FlaskForm):
    """A button that changes something: CSRF token only."""


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[DataRequired(message="Give the token a name."),
                                           Length(max=MAX_NAME_LENGTH)])
    days = IntegerField("Expires after", default=30, validators=[InputRequired(), NumberRange(min=1)])
    scope = SelectField("Scope", default=READ, choices=[(scope, SCOPE_NAMES[scope]) for scope in SCOPES])


def _current_session_hash():
    token = request.cookies.get(current_app.config["BERTH_SESSION_COOKIE"], "")
    return hash_token(token) if token else None


def _lifetimes():
    max_days = current_app.config["BERTH_TOKEN_MAX_DAYS"]
    return [days for days in LIFETIMES if days <= max_days] or [max_days]


def _page(token_form=None, new_token=None, status=200):
    return render_template(
        "account.html",
        sessions=user_sessions(g.user),
        current_hash=_current_session_hash(),
        tokens=user_tokens(g.user),
        scopes=[(scope, SCOPE_NAMES[scope]) for scope in SCOPES if scope != ADMIN or g.user.is_admin],
        scope_names=SCOPE_NAMES,
        sso=bool(current_app.config["BERTH_OIDC_ISSUER"]),
        provider_name=current_app.config["BERTH_OIDC_PROVIDER_NAME"],
        token_form=token_form or TokenForm(),
        action_form=ActionForm(),
        lifetimes=_lifetimes(),
        new_token=new_token,
        now=utcnow(),
    ), status


@bp.get("")
@login_required
def index():
    # A token made by the last POST is shown on this page once, then forgotten.
    return _page(new_token=session.pop(_NEW_TOKEN, None))


@bp.post("/tokens")
@login_required
def create():
    form = TokenForm()
    if not form.validate_on_submit():
        return _page(token_form=form, status=400)
    try:
        token, value = create_token(g.user, form.name.data, form.days.data,
                                    current_app.config["BERTH_TOKEN_MAX_DAYS"], actor=f"user:{g.user.id}",
                                    scope=form.scope.data)
    except TokenError as error:
        form[error.field].errors.append(str(error))
        return _page(token_form=form, status=400)
    db.session.commit()
    # Carried to the next page in Flask's signed, HTTP-only, main-host cookie, which that page
    # clears at once: a reload of the page never shows it again, nor re-posts the form.
    session[_NEW_TOKEN] = {"name": token.name, "value": value, "expires_at": token.expires_at.isoformat(),
                           "scope": SCOPE_NAMES[token.scope]}
    return redirect("/account#new-token", code=303)


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def revoke(token_id):
    revoked = revoke_token(g.user, token_id, actor=f"user:{g.user.id}")
    return _answer(revoked, "The token is revoked: it is refused from now on.", "That token was revoked already.",
                   section="tokens")


@bp.post("/sessions/<int:session_id>/end")
@login_required
def end(session_id):
    ended = end_session(g.user, session_id, actor=f"user:{g.user.id}")
    return _answer(ended, "The session is ended: that browser is signed out.", "That session had ended already.",
                   section="sessions")


@bp.post("/sessions/end-others")
@login_required
def end_others():
    current = next((s for s in user_sessions(g.user) if s.token_hash == _current_session_hash()), None)
    ended = end_other_sessions(g.user, current.id if current else 0, actor=f"user:{g.user.id}")
    return _answer(ended, f"Signed out {ended} other session{'s' if ended != 1 else ''}.",
                   "There were no other sessions.", section="sessions")


def _answer(changed, done, unchanged, section):
    """Commit what changed and say so, or say that nothing needed changing; then back to that section."""
    if changed:
        db.session.commit()
    flash(done if changed else unchanged)
    return redirect(f"/account#{section}")


_BROWSERS = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"),
             ("curl/", "curl"), ("python-requests/", "Python requests"))
_SYSTEMS = (("Windows", "Windows"), ("Android", "Android"), ("iPhone", "iOS"), ("Mac OS X", "macOS"),
            ("CrOS", "ChromeOS"), ("Linux", "Linux"))


@bp.app_template_filter("device")
def device(user_agent):
    """A short name for a User-Agent: "Chrome on Linux"."""
    agent = user_agent or ""
    browser = next((name for marker, name in _BROWSERS if marker in agent), None)
    system = next((name for marker, name in _SYSTEMS if marker in agent), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or (re.split(r"[\s;(]", agent, maxsplit=1)[0][:40] or "Unknown device")


@bp.app_template_filter("when")
def when(moment):
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"
