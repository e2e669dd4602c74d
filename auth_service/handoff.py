"""The sign-in hand-off: how a browser signed in on the main host gets signed in on a tool host.

The platform session cookie is host-only on the main host, so no tool host ever receives it,
and no tool's page can plant one the platform would read. Each tool host gets a cookie of its
own instead, the way per-service proxies do it:

1. A navigation to a tool host without its cookie: the auth check answers 401 with the
   hand-off's address, and nginx redirects there: /auth/handoff?host=<tool host>&next=<path>
   on the main host.
2. There, a signed-in browser (anyone else signs in first, then comes back) gets a one-time
   code, good for CODE_LIFETIME seconds, for that session and that tool host, in a redirect
   to <tool host>/__berth/handoff?code=...&next=<path>.
3. The tool host redeems the code once (a conditional UPDATE: a replayed address fails), sets
   its host-only cookie, and redirects to the path.

Whether the user may open the tool is decided, as for every request, by the auth check on the
tool host; the cookie only says who the user is there. It holds while its session does
(berth.models.ToolSignIn).
"""
import hmac
import secrets
from datetime import timedelta
from urllib.parse import quote

from flask import Blueprint, Response, current_app, redirect, request
from sqlalchemy import update

from auth_service.sessions import find_session, session_token
from berth.extensions import db
from berth.hosts import (is_main_host, parse_tool_host, public_url, safe_relative_path, strip_port,
                         tool_cookie_name, tools_domain)
from berth.models import ToolSignIn, hash_token, utcnow
from berth.web.launch_pass import PASS_SECONDS, handoff_signature, launch_pass, own_navigation, pass_cookie_name

CODE_LIFETIME = 60  # seconds from the main host's redirect to the tool host's answer

bp = Blueprint("handoff", __name__)


def _refused(message, status=400):
    return Response(message + "\n", status=status, mimetype="text/plain")


def _no_referrer(response):
    # The code is in the address: never let it travel on in a Referer.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/auth/handoff")
def issue():
    """On the main host: a one-time code for this sign-in and the tool host, sent there."""
    config = current_app.config
    if not is_main_host(request.host, config["BERTH_DOMAIN"]):
        return _refused("The sign-in hand-off starts on Berth's main address.", 404)
    host = strip_port(request.args.get("host", ""))
    next_path = safe_relative_path(request.args.get("next", "/"))
    if parse_tool_host(host, tools_domain(config)) is None:
        return _refused("That is not the address of a tool on this Berth.")
    if next_path is None:
        return _refused("The page to return to must be a path on the tool's own address.")
    session = find_session(session_token())
    if session is None:
        back = "/auth/handoff?host=" + quote(host, safe="") + "&next=" + quote(next_path, safe="")
        return redirect(public_url(config, config["BERTH_DOMAIN"], "/auth/login?next=" + quote(back, safe="")))
    code = secrets.token_urlsafe(32)
    db.session.add(ToolSignIn(session_id=session.id, host=host, code_hash=hash_token(code),
                              code_expires_at=utcnow() + timedelta(seconds=CODE_LIFETIME)))
    db.session.commit()
    target = public_url(config, host, f"/__berth/handoff?code={code}&next={quote(next_path, safe='')}")
    if own_navigation(request.headers):  # may start the tool there (berth/web/launch_pass.py)
        target += f"&launch={handoff_signature(config['SECRET_KEY'], code)}"
    return _no_referrer(redirect(target))


@bp.get("/__berth/handoff")
def redeem():
    """On a tool host: redeem the code once, set this host's cookie, go on to the path."""
    config = current_app.config
    host = strip_port(request.host)
    if parse_tool_host(host, tools_domain(config)) is None:
        return _refused("The sign-in hand-off ends on a tool's address.", 404)
    next_path = safe_relative_path(request.args.get("next", "/"))
    if next_path is None:
        return _refused("The page to return to must be a path on this tool's own address.")
    code = request.args.get("code", "")
    token = secrets.token_urlsafe(32)
    now = utcnow()
    redeemed = 0
    if 0 < len(code) <= 200:
        redeemed = db.session.execute(
            update(ToolSignIn)
            .where(ToolSignIn.code_hash == hash_token(code), ToolSignIn.host == host,
                   ToolSignIn.token_hash.is_(None), ToolSignIn.code_expires_at > now)
            .values(token_hash=hash_token(token), redeemed_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        db.session.commit()
    if redeemed != 1:
        return _no_referrer(_refused(
            "This sign-in link was already used, has expired, or is for another address. "
            f"Open {public_url(config, host, next_path)} again to sign in here.", 403))
    response = _no_referrer(redirect(public_url(config, host, next_path)))
    response.set_cookie(tool_cookie_name(config), token, path="/", secure=config["BERTH_SCHEME"] == "https",
                        httponly=True, samesite="Lax")
    if hmac.compare_digest(request.args.get("launch", ""), handoff_signature(config["SECRET_KEY"], code)):
        response.set_cookie(pass_cookie_name(config), launch_pass(config["SECRET_KEY"], host), path="/",
                            max_age=PASS_SECONDS, secure=config["BERTH_SCHEME"] == "https", httponly=True,
                            samesite="Lax")
    return response
