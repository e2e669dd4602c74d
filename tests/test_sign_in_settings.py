"""Sign-in settings and their rules, in process: BERTH_LOCAL_LOGIN (on, admins, off), the
single sign-on settings that must go together, and how Berth recognises its own API tokens."""
import pytest

import auth_service
from berth.settings import SettingError, load_settings
from berth.extensions import db
from berth.models import User
from berth.tokens import bearer_token, token_allowed_on_main_host
from tests.actions import csrf_token

SSO = {"BERTH_OIDC_ISSUER": "http://127.0.0.1:9/", "BERTH_OIDC_CLIENT_ID": "berth",
       "BERTH_OIDC_PROVIDER_NAME": "Example ID"}


def _settings(tmp_path, **environ):
    return load_settings({"BERTH_DATA_DIR": str(tmp_path), **environ})


# -- settings ------------------------------------------------------------------------------

def test_single_sign_on_settings_are_read_and_the_issuer_normalised(tmp_path):
    settings = _settings(tmp_path, **SSO, BERTH_LOCAL_LOGIN="admins", BERTH_OIDC_GROUPS_CLAIM="groups")
    assert settings["BERTH_OIDC_ISSUER"] == "http://127.0.0.1:9"
    assert settings["BERTH_LOCAL_LOGIN"] == "admins"
    assert settings["BERTH_OIDC_SCOPES"] == "openid email profile"


@pytest.mark.parametrize("environ, message", [
    ({"BERTH_LOCAL_LOGIN": "off"}, "BERTH_LOCAL_LOGIN=off needs single sign-on"),
    ({"BERTH_LOCAL_LOGIN": "admins"}, "BERTH_LOCAL_LOGIN=admins needs single sign-on"),
    ({"BERTH_LOCAL_LOGIN": "sometimes"}, "BERTH_LOCAL_LOGIN='sometimes' must be one of on, admins, off"),
    ({"BERTH_OIDC_ISSUER": "http://id.example.org"}, "BERTH_OIDC_CLIENT_ID is required too"),
    ({**SSO, "BERTH_OIDC_SCOPES": "email profile"}, "must include openid"),
    ({"BERTH_OIDC_ISSUER": "id.example.org"}, "is not an http(s) URL"),
    ({"BERTH_OIDC_ISSUER": "ftp://id.example.org"}, "is not an http(s) URL"),
    ({"BERTH_OIDC_ISSUER": "https://id.example.org/?x=1"}, "without query or fragment"),
    ({"BERTH_SESSION_IDLE_LIFETIME": "100"}, "must be at least twice BERTH_ACTIVITY_INTERVAL (60)"),
    ({"BERTH_SESSION_IDLE_LIFETIME": "-1"}, "below the minimum of 0"),
    ({"BERTH_TOKEN_MAX_DAYS": "0"}, "below the minimum of 1"),
])
def test_settings_that_cannot_work_stop_the_process_naming_the_variable(tmp_path, environ, message):
    with pytest.raises(SettingError) as error:
        _settings(tmp_path, **environ)
    assert message in str(error.value)


def test_the_idle_lifetime_can_be_turned_off(tmp_path):
    assert _settings(tmp_path, BERTH_SESSION_IDLE_LIFETIME="0")["BERTH_SESSION_IDLE_LIFETIME"] == 0


# -- API tokens ----------------------------------------------------------------------------

@pytest.mark.parametrize("header, token", [
    ("Bearer berth_abc-DEF_123", "berth_abc-DEF_123"),
    ("bearer   berth_x ", "berth_x"),
    ("BEARER berth_x", "berth_x"),
    ("Bearer other_token", None),
    ("Basic dXNlcjpwYXNz", None),
    ("Bearer berth_", None),
    ("Bearer berth_a b", None),
    ("Bearer berth_" + "a" * 201, None),
    ("", None),
    (None, None),
])
def test_only_berth_tokens_are_taken_from_authorization(header, token):
    assert bearer_token(header) == token


@pytest.mark.parametrize("uri, allowed", [
    ("/api/me", True), ("/api/instances?state=live", True), ("/api/openapi.json", True),
    ("/api", False), ("/", False), ("/account", False), ("/api/../account", False), ("/api/./me", False),
    ("/api/%2e%2e/account", False), ("/api/..%2faccount", False), ("/api\\..\\account", False), ("", False),
    ("/apiary", False),
])
def test_tokens_reach_only_plain_api_paths(uri, allowed):
    assert token_allowed_on_main_host(uri) is allowed


# -- the sign-in page per BERTH_LOCAL_LOGIN ----------------------------------------------------

@pytest.fixture
def auth_app(tmp_path, request):
    mode = request.param
    environ = {**SSO, "BERTH_LOCAL_LOGIN": mode, "BERTH_DATA_DIR": str(tmp_path)}
    config = load_settings(environ)
    config.update(SQLALCHEMY_DATABASE_URI="sqlite://", TESTING=True)
    app = auth_service.create_app(config)
    with app.app_context():
        db.create_all()
        for email, admin in (("admin@example.org", True), ("user@example.org", False)):
            user = User(email=email, name=email.split("@")[0], is_admin=admin)
            user.set_password("a long password")
            db.session.add(user)
        db.session.commit()
    yield app  # each request then has an app context of its own, as in production
    with app.app_context():
        db.engine.dispose()


def _post_login(app, email):
    client = app.test_client()
    headers = {"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"]}
    page = client.get("/auth/login", headers=headers).get_data(as_text=True)
    return client.post("/auth/login", headers=headers,
                       data={"csrf_token": csrf_token(page) or "", "email": email,  # no form when off
                             "password": "a long password", "next": "/"})


def _login_page(app):
    return app.test_client().get("/auth/login", headers={"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"]})


@pytest.mark.parametrize("auth_app", ["on"], indirect=True)
def test_with_local_login_on_everyone_may_use_a_password(auth_app):
    page = _login_page(auth_app).get_data(as_text=True)
    assert "Sign in with Example ID" in page and "or with a password" in page
    assert _post_login(auth_app, "user@example.org").status_code == 302


@pytest.mark.parametrize("auth_app", ["admins"], indirect=True)
def test_with_local_login_for_admins_only_others_are_sent_to_single_sign_on(auth_app):
    page = _login_page(auth_app).get_data(as_text=True)
    assert "or, for administrators, with a password" in page
    assert _post_login(auth_app, "admin@example.org").status_code == 302
    refused = _post_login(auth_app, "user@example.org")
    assert refused.status_code == 403
    assert "Password sign-in is for administrators only. Sign in with Example ID." in refused.get_data(as_text=True)
    assert "berth_session" not in refused.headers.get("Set-Cookie", "")


@pytest.mark.parametrize("auth_app", ["off"], indirect=True)
def test_with_local_login_off_only_single_sign_on_is_offered(auth_app):
    page = _login_page(auth_app).get_data(as_text=True)
    assert "Sign in with Example ID" in page and 'name="password"' not in page
    assert _post_login(auth_app, "admin@example.org").status_code == 400  # no form, so no CSRF token
    auth_app.config["WTF_CSRF_ENABLED"] = False  # even a post that passed CSRF is refused
    refused = _post_login(auth_app, "admin@example.org")
    assert refused.status_code == 403
    assert "Password sign-in is turned off here." in refused.get_data(as_text=True)
