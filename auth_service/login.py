"""The sign-in page (local accounts, and the way to single sign-on), and logout.

Logout revokes the session row at once; a session that came from single sign-on also signs
out at the provider when it offers an end_session_endpoint.
"""
from flask import Blueprint, current_app, redirect, render_template, request
from flask_wtf import FlaskForm
from sqlalchemy import func, select
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Length

from auth_service.sessions import clear_session_cookie, complete_sign_in, find_session, revoke_session, session_token
from berth import throttle
from berth.extensions import db
from berth.hosts import safe_next_url
from berth.models import User, record_event, verify_password
from berth.web import client_ip

bp = Blueprint("login", __name__, url_prefix="/auth")


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1000)])
    next = StringField()


class LogoutForm(FlaskForm):
    pass


def _render_login(form, next_url, status=200, error=None, headers=None):
    config = current_app.config
    return render_template(
        "login.html", form=form, next_url=next_url, error=error,
        local_login=config["BERTH_LOCAL_LOGIN"], sso=bool(config["BERTH_OIDC_ISSUER"]),
        provider_name=config["BERTH_OIDC_PROVIDER_NAME"],
    ), status, headers or {}


# Where the refused attempts came from, for the page and the audit log.
_TOO_MANY = {"account": "for this account", "address": "from your address"}


def _refuse_guessing(form, next_url, email, user, address, refusal):
    """Too many failed sign-ins for this email or from this address: 429, and when to try again."""
    record_event("auth.login_throttled", f"Sign-in for {email} refused: too many failed sign-ins "
                 f"{_TOO_MANY[refusal.kind]}", actor="anonymous", user_id=user.id if user else None,
                 ip=address, throttle=refusal.kind, retry_after=refusal.retry_after)
    db.session.commit()
    unit = "second" if refusal.retry_after == 1 else "seconds"
    return _render_login(form, next_url, 429, headers={"Retry-After": str(refusal.retry_after)},
                         error=f"Too many failed sign-ins {_TOO_MANY[refusal.kind]}. "
                               f"Wait {refusal.retry_after} {unit}, then try again.")


@bp.route("/login", methods=["GET", "POST"])
def login():
    config = current_app.config
    form = LoginForm()
    next_url = safe_next_url(config, form.next.data or request.args.get("next"))
    if request.method == "GET" and find_session(session_token()):
        return redirect(next_url)
    if request.method == "POST" and config["BERTH_LOCAL_LOGIN"] == "off":
        return _render_login(form, next_url, 403, error="Password sign-in is turned off here. "
                             f"Sign in with {config['BERTH_OIDC_PROVIDER_NAME']}.")
    if not form.validate_on_submit():
        return _render_login(form, next_url, 400 if request.method == "POST" else 200)

    email = form.email.data.strip().lower()
    user = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
    address = client_ip()
    refusal = throttle.claim_attempt(email, address)
    db.session.commit()  # counted before the slow password check, so that racing guesses see it
    if refusal is not None:
        return _refuse_guessing(form, next_url, email, user, address, refusal)
    if not verify_password(user, form.password.data):
        record_event("auth.login_failed", f"Failed sign-in for {email}", actor="anonymous",
                     user_id=user.id if user else None, ip=address)
        db.session.commit()
        return _render_login(form, next_url, 401,
                             error="That email and password do not match an active account.")
    throttle.attempt_succeeded(email, address)
    if config["BERTH_LOCAL_LOGIN"] == "admins" and not user.is_admin:
        record_event("auth.login_failed", f"Password sign-in refused for {email}: not an administrator",
                     actor="anonymous", user_id=user.id, ip=address)
        db.session.commit()
        return _render_login(form, next_url, 403, error="Password sign-in is for administrators only. "
                             f"Sign in with {config['BERTH_OIDC_PROVIDER_NAME']}.")

    return complete_sign_in(user, next_url, method="password")


@bp.route("/logout", methods=["GET", "POST"])
def logout():
    config = current_app.config
    form = LogoutForm()
    session = find_session(session_token())
    if request.method == "GET" or not form.validate_on_submit():
        if session is None:
            return redirect("/auth/login")
        return render_template("logout.html", form=form, user=session.user)
    provider_logout = None
    if session is not None:
        revoke_session(session_token())
        record_event("auth.logout", f"{session.user.email} signed out",
                     actor=f"user:{session.user_id}", user_id=session.user_id, ip=client_ip())
        db.session.commit()
        if session.method == "oidc" and config["BERTH_OIDC_ISSUER"]:
            from auth_service import oidc  # only imported with single sign-on (authlib: ~16 MB a process)

            provider_logout = oidc.logout_url(config)
    response = redirect(provider_logout or "/auth/login?signed_out=1")
    clear_session_cookie(response, config)
    return response
