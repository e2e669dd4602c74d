"""Single sign-on over OpenID Connect, with authlib: /auth/oidc/login and /auth/oidc/callback.

The authorization-code flow with state, nonce and PKCE (S256). Between the redirect to the
provider and the callback, authlib keeps state, nonce and the PKCE verifier in Flask's
signed session cookie (berth_csrf, host-only on the main host), never in process memory, so
any replica can take the callback. The ID token is checked in full: signature against the
provider's keys, issuer, audience, expiry, issue time and nonce. The user is matched on
(issuer, sub) and kept up to date (berth/accounts.py). Every failure gets a page that says
what happened and offers to try again.

A local account is linked to the provider's identity only at its owner's request, made while
signed in (/auth/oidc/link: the flow's saved state names that session, and the callback must
come back to it), or by email when BERTH_OIDC_LINK_BY_EMAIL allows it. Failed callbacks are
counted per client address (berth/throttle.py, "oidc:<ip>"): past BERTH_OIDC_CALLBACK_FAILURES
the address waits before its next callback is even read.
"""
import logging
from urllib.parse import quote

import requests
from authlib.common.urls import add_params_to_uri
from authlib.integrations.base_client.errors import MismatchingStateError, OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, abort, current_app, redirect, render_template, request, session
from flask_wtf import FlaskForm
from joserfc.errors import ExpiredTokenError, JoseError

from auth_service.sessions import complete_sign_in, find_session, session_token
from berth import throttle
from berth.accounts import SignInRefused, link_identity, user_from_claims
from berth.extensions import db
from berth.hosts import public_url, safe_next_url
from berth.models import record_event
from berth.web import client_ip

log = logging.getLogger(__name__)

bp = Blueprint("oidc", __name__, url_prefix="/auth/oidc")

_CLIENT = "oidc"
# ID tokens are accepted this many seconds past their expiry and before their issue time,
# for clocks that disagree a little.
LEEWAY_SECONDS = 60


class ProviderDown(Exception):
    """The provider did not answer, or answered with something that is not OpenID Connect."""


class Unverified(Exception):
    """The provider's answer does not prove who the user is (no ID token, userinfo for another sub)."""


def init_app(app):
    """Register the provider when BERTH_OIDC_ISSUER is set; its discovery is read on first use."""
    config = app.config
    if not config["BERTH_OIDC_ISSUER"]:
        return
    oauth = OAuth(app)
    oauth.register(
        _CLIENT,
        client_id=config["BERTH_OIDC_CLIENT_ID"],
        client_secret=config["BERTH_OIDC_CLIENT_SECRET"],
        server_metadata_url=config["BERTH_OIDC_ISSUER"] + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": config["BERTH_OIDC_SCOPES"],
            "code_challenge_method": "S256",
            "default_timeout": config["BERTH_OIDC_TIMEOUT"],
        },
    )


def enabled():
    return bool(current_app.config["BERTH_OIDC_ISSUER"])


def _client():
    return current_app.extensions["authlib.integrations.flask_client"].create_client(_CLIENT)


def metadata():
    """The provider's discovery document (read once per process, again after a failure)."""
    client = _client()
    try:
        data = client.load_server_metadata()
    except (requests.RequestException, ValueError) as error:
        raise ProviderDown(f"discovery failed: {error}") from None
    issuer = current_app.config["BERTH_OIDC_ISSUER"]
    if str(data.get("issuer", "")).rstrip("/") != issuer or not data.get("authorization_endpoint"):
        client.server_metadata.clear()  # read it again next time
        raise ProviderDown(f"the discovery document at {issuer} names issuer {data.get('issuer')!r}")
    return data


def _probe_provider():
    """The discovery document is read once per process; check the provider still answers, so
    that a browser is never sent to a provider that is down (it would see a browser error page)."""
    url = current_app.config["BERTH_OIDC_ISSUER"] + "/.well-known/openid-configuration"
    try:
        requests.get(url, timeout=5).close()
    except requests.RequestException as error:
        raise ProviderDown(f"the provider does not answer: {error}") from None


def _failure(title, message, status, kind, next_url=None, retry=True):
    address = client_ip()
    record_event("auth.sso_failed", f"Single sign-on failed: {kind}: {message}", actor="anonymous",
                 ip=address, failure=kind)
    if kind != "provider_down":  # not the client's doing
        threshold = current_app.config["BERTH_OIDC_CALLBACK_FAILURES"]
        wait = throttle.count_failure(throttle.callback_key(address), threshold)
        if wait:
            record_event("auth.sso_throttled", f"Single sign-on callbacks from {address or 'an unreadable address'} "
                         f"refused for {wait} s: {threshold} or more failures", actor="anonymous", ip=address,
                         throttle="oidc", retry_after=wait)
    db.session.commit()
    return _error_page(title, message, status, next_url, retry)


def _error_page(title, message, status, next_url=None, retry=True, headers=None):
    return render_template("sso_error.html", title=title, message=message, retry=retry,
                           next_url=next_url or public_url(current_app.config,
                                                           current_app.config["BERTH_DOMAIN"]),
                           provider_name=current_app.config["BERTH_OIDC_PROVIDER_NAME"]), status, headers or {}


def _provider_down(next_url, detail):
    log.warning("single sign-on: provider not answering: %s", detail)
    name = current_app.config["BERTH_OIDC_PROVIDER_NAME"]
    fallback = {"on": " Meanwhile you can sign in with a password.",
                "admins": " Meanwhile administrators can sign in with a password."}
    return _failure("Sign-in provider unavailable",
                    f"Berth could not reach {name}. It may be down for a moment: try again shortly."
                    + fallback.get(current_app.config["BERTH_LOCAL_LOGIN"], ""),
                    503, "provider_down", next_url)


def _redirect_uri():
    config = current_app.config
    return public_url(config, config["BERTH_DOMAIN"], "/auth/oidc/callback")


@bp.get("/login")
def login():
    """Send the browser to the provider, remembering where it goes afterwards."""
    if not enabled():
        abort(404)
    return _to_provider(safe_next_url(current_app.config, request.args.get("next")))


def _to_provider(next_url, **saved):
    """Redirect to the provider's authorization endpoint; saved rides along in the flow's state."""
    client = _client()
    try:
        metadata()
        _probe_provider()
        authorization = client.create_authorization_url(_redirect_uri())
    except ProviderDown as error:
        return _provider_down(next_url, error)
    client.save_authorize_data(redirect_uri=_redirect_uri(), next=next_url, **saved, **authorization)
    return redirect(authorization["url"])


class LinkForm(FlaskForm):
    pass


@bp.route("/link", methods=["GET", "POST"])
def link():
    """The signed-in owner of a local account links it to their identity at the provider: a
    page that asks, then the flow, whose state names this session (the callback checks it)."""
    if not enabled():
        abort(404)
    config = current_app.config
    signed_in = find_session(session_token())
    if signed_in is None:
        return redirect("/auth/login?next=" + quote(public_url(config, config["BERTH_DOMAIN"], "/auth/oidc/link"),
                                                    safe=""))
    account = public_url(config, config["BERTH_DOMAIN"], "/account")
    if signed_in.user.oidc_subject is not None:
        return redirect(account)
    form = LinkForm()
    if not form.validate_on_submit():
        status = 400 if request.method == "POST" else 200
        return render_template("sso_link.html", form=form, user=signed_in.user,
                               provider_name=config["BERTH_OIDC_PROVIDER_NAME"]), status
    return _to_provider(account, link_session=signed_in.id)


@bp.get("/callback")
def callback():
    """The provider sends the browser back here with a code (or an error) and the state."""
    if not enabled():
        abort(404)
    config = current_app.config
    wait = throttle.waiting(throttle.callback_key(client_ip()))
    if wait:
        return _error_page("Too many failed sign-ins",
                           f"Too many single sign-ons failed from your address. Wait {wait} "
                           f"second{'s' if wait != 1 else ''}, then try again.", 429,
                           headers={"Retry-After": str(wait)})
    client = _client()
    state = request.args.get("state", "")
    saved = client.framework.get_state_data(session, state) if state else None
    next_url = safe_next_url(config, saved.get("next") if saved else None)

    error = request.args.get("error")
    if error and saved is None:
        return _state_mismatch(next_url)
    if error:
        client.framework.clear_state_data(session, state)
        if error == "access_denied":
            return _failure("Sign-in cancelled",
                            f"{config['BERTH_OIDC_PROVIDER_NAME']} did not sign you in: "
                            f"{_description(request.args, 'access was denied')}.", 403, "denied", next_url)
        return _failure("Sign-in failed",
                        f"{config['BERTH_OIDC_PROVIDER_NAME']} answered with an error ({error[:80]}): "
                        f"{_description(request.args, 'no reason given')}.", 502, "provider_error", next_url)
    try:
        token = client.authorize_access_token(leeway=LEEWAY_SECONDS)
        if "userinfo" not in token:
            raise Unverified("the provider returned no ID token")
        claims = _claims(client, token)
    except MismatchingStateError:
        return _state_mismatch(next_url)
    except (ProviderDown, requests.RequestException, ValueError, RuntimeError) as failure:
        return _provider_down(next_url, failure)
    except Unverified as failure:
        return _failure("Sign-in could not be verified", f"The provider's answer is not valid: {failure}.",
                        401, "id_token_invalid", next_url)
    except OAuthError as failure:
        return _failure("Sign-in failed",
                        f"{config['BERTH_OIDC_PROVIDER_NAME']} refused the sign-in "
                        f"({failure.error}): {failure.description or 'no reason given'}. The sign-in code "
                        "may have been used already, or have expired. Start again.",
                        400, "token_refused", next_url)
    except ExpiredTokenError:
        return _failure("Sign-in could not be verified",
                        "The provider's ID token has expired already. This happens when the clocks of "
                        "Berth and the provider disagree. Start again, or tell an administrator.",
                        401, "id_token_expired", next_url)
    except JoseError as failure:
        return _failure("Sign-in could not be verified",
                        f"The provider's ID token is not valid for Berth ({failure.error}"
                        f"{': ' + failure.description if failure.description else ''}).",
                        401, "id_token_invalid", next_url)

    try:
        if saved and saved.get("link_session"):
            _link(saved["link_session"], claims)
        user = user_from_claims(config["BERTH_OIDC_ISSUER"], claims, config["BERTH_OIDC_GROUPS_CLAIM"],
                                link_by_email=config["BERTH_OIDC_LINK_BY_EMAIL"],
                                admin_group=config["BERTH_OIDC_ADMIN_GROUP"])
    except SignInRefused as refusal:
        db.session.rollback()
        return _failure(refusal.title, refusal.message, refusal.status, refusal.kind, next_url,
                        retry=refusal.kind != "deactivated")
    return complete_sign_in(user, next_url, method="oidc")


def _link(session_id, claims):
    """The callback of a link that a signed-in user asked for: this browser must still be
    signed in to that same session, or the identity is linked to nobody."""
    signed_in = find_session(session_token())
    if signed_in is None or signed_in.id != session_id:
        raise SignInRefused("Single sign-on not linked",
                            "You are no longer signed in as the account that asked to link single "
                            "sign-on. Sign in with your password, then try again.", status=403,
                            kind="link_session_ended")
    link_identity(signed_in.user, current_app.config["BERTH_OIDC_ISSUER"], claims)


def _state_mismatch(next_url):
    return _failure("Sign-in expired",
                    "This sign-in does not belong to this browser, or it was used already or took too "
                    "long. Start again.", 400, "state_mismatch", next_url)


def _description(args, default):
    return (args.get("error_description") or default)[:300].rstrip(". ")  # the page adds its own


def _claims(client, token):
    """The ID token's claims, completed from userinfo (many providers put email and name only there)."""
    claims = dict(token["userinfo"])
    endpoint = metadata().get("userinfo_endpoint")
    if endpoint and token.get("access_token"):
        answer = client.get(endpoint, token=token)
        if answer.status_code != 200:
            raise ProviderDown(f"userinfo answered {answer.status_code}")
        info = answer.json()
        if not isinstance(info, dict) or info.get("sub") != claims.get("sub"):
            raise Unverified("userinfo names another user than the ID token")
        claims = {**info, **claims}  # the signed ID token wins where both say something
    return claims


def logout_url(config):
    """Where to send the browser to sign out at the provider too, or None if it offers no way."""
    try:
        endpoint = metadata().get("end_session_endpoint")
    except ProviderDown as error:
        log.warning("single sign-on: no sign-out at the provider: %s", error)
        return None
    if not endpoint:
        return None
    return add_params_to_uri(endpoint, {
        "client_id": config["BERTH_OIDC_CLIENT_ID"],
        "post_logout_redirect_uri": public_url(config, config["BERTH_DOMAIN"], "/auth/login?signed_out=1"),
    })
