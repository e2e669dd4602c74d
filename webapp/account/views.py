"""Account pages: list and end sessions, create, list and revoke personal API tokens, change
one's password."""
import re
from datetime import datetime

from flask import Blueprint, current_app, flash, g, redirect, render_template, request, session
from flask_wtf import FlaskForm
from wtforms import IntegerField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from berth import throttle
from berth.accounts import change_password, end_other_sessions, end_session, password_problem, user_sessions
from berth.extensions import db
from berth.web import client_ip
from webapp.identity import login_required
from berth.models import hash_token, record_event, utcnow, verify_password
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


class PasswordForm(FlaskForm):
    current = PasswordField("Current password", validators=[DataRequired(message="Enter your current password.")])
    new = PasswordField("New password", validators=[DataRequired(message="Choose a new password.")])
    repeat = PasswordField("New password again", validators=[DataRequired(message="Type the new password again.")])

    def validate(self, extra_validators=None):
        if not super().validate(extra_validators):
            return False
        problem = password_problem(self.new.data)
        if problem is None and self.new.data != self.repeat.data:
            problem = "The two new passwords differ. Type the same one twice."
        if problem is None and self.new.data == self.current.data:
            problem = "The new password is the one you have now. Choose another."
        if problem:
            self.new.errors.append(problem)
            return False
        return True


def _current_session_hash():
    token = request.cookies.get(current_app.config["BERTH_SESSION_COOKIE"], "")
    return hash_token(token) if token else None


def _lifetimes():
    max_days = current_app.config["BERTH_TOKEN_MAX_DAYS"]
    return [days for days in LIFETIMES if days <= max_days] or [max_days]


def _current_session():
    return next((s for s in user_sessions(g.user) if s.token_hash == _current_session_hash()), None)


def _page(token_form=None, new_token=None, password_form=None, status=200, headers=None):
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
        password_form=password_form or PasswordForm(),
        has_password=bool(g.user.password_hash),
        action_form=ActionForm(),
        lifetimes=_lifetimes(),
        new_token=new_token,
        now=utcnow(),
    ), status, headers or {}


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
    current = _current_session()
    ended = end_other_sessions(g.user, current.id if current else 0, actor=f"user:{g.user.id}")
    return _answer(ended, f"Signed out {ended} other session{'s' if ended != 1 else ''}.",
                   "There were no other sessions.", section="sessions")


@bp.post("/password")
@login_required
def password():
    """A user with a password of Berth's own changes it; single sign-on accounts have none.

    The current password is asked for, so that someone who only holds a session (a browser left
    signed in) cannot lock its owner out; wrong guesses count against the account and the address
    as sign-ins do (berth/throttle.py)."""
    form = PasswordForm()
    if not g.user.password_hash:
        flash("Your account signs in through single sign-on: it has no Berth password to change.")
        return redirect("/account")
    if not form.validate_on_submit():
        return _page(password_form=form, status=400)
    address = client_ip()
    refusal = throttle.claim_attempt(g.user.email, address)
    db.session.commit()  # counted before the slow password check, so that racing guesses see it
    if refusal is not None:
        unit = "second" if refusal.retry_after == 1 else "seconds"
        record_event("user.password_throttled", f"Password change for {g.user.email} refused: too many wrong "
                     "current passwords", actor=f"user:{g.user.id}", user_id=g.user.id, ip=address,
                     throttle=refusal.kind, retry_after=refusal.retry_after)
        db.session.commit()
        form.current.errors.append(f"Too many wrong passwords. Wait {refusal.retry_after} {unit}, then try again.")
        return _page(password_form=form, status=429, headers={"Retry-After": str(refusal.retry_after)})
    if not verify_password(g.user, form.current.data):
        record_event("user.password_failed", f"Password change for {g.user.email} refused: wrong current password",
                     actor=f"user:{g.user.id}", user_id=g.user.id, ip=address)
        db.session.commit()
        form.current.errors.append("That is not your current password.")
        return _page(password_form=form, status=400)
    throttle.attempt_succeeded(g.user.email, address)
    current = _current_session()
    ended = change_password(g.user, form.new.data, current.id if current else 0, actor=f"user:{g.user.id}")
    db.session.commit()
    flash("Your password is changed." + (f" {ended} other session{'s were' if ended != 1 else ' was'} signed out."
                                         if ended else ""))
    return redirect("/account#password", code=303)


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
