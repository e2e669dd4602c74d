"""The sign-in throttle's counting, in process on SQLite (berth/throttle.py); through nginx and
on PostgreSQL, tests/security/test_guessing.py."""
from datetime import timedelta

import pytest

import auth_service
from berth import throttle
from berth.extensions import db
from berth.models import SignInThrottle, User, utcnow
from berth.settings import load_settings
from tests.actions import csrf_token

PASSWORD = "a long password"


@pytest.fixture
def app(tmp_path):
    config = load_settings({"BERTH_DATA_DIR": str(tmp_path)})
    config.update(SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/berth.db", TESTING=True)
    app = auth_service.create_app(config)
    with app.app_context():
        db.create_all()
        user = User(email="owner@example.org", name="owner")
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()
    yield app
    with app.app_context():
        db.engine.dispose()


def _sign_in(app, email, password, address="10.0.0.1"):
    client = app.test_client()
    headers = {"X-Berth-Proxy-Secret": app.config["BERTH_PROXY_SECRET"], "X-Real-IP": address}
    page = client.get("/auth/login", headers=headers).get_data(as_text=True)
    return client.post("/auth/login", headers=headers, data={"csrf_token": csrf_token(page), "email": email,
                                                            "password": password, "next": "/"})


def _row(app, key):
    with app.app_context():
        return db.session.get(SignInThrottle, key)


def test_the_wait_doubles_from_one_second_up_to_the_ceiling(app):
    threshold = app.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    waits = [throttle.delay(app.config, threshold + extra, threshold) for extra in range(-1, 12)]
    assert waits == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_each_failure_past_the_threshold_sets_the_next_wait(app):
    threshold = app.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    for _ in range(threshold):
        assert _sign_in(app, "Owner@example.org", "wrong").status_code == 401
    row = _row(app, "account:owner@example.org")
    assert row.failures == threshold
    assert timedelta(0) < row.blocked_until - utcnow() <= timedelta(seconds=1)

    refused = _sign_in(app, "owner@example.org", PASSWORD)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert _row(app, "account:owner@example.org").failures == threshold  # a refusal is not counted


def test_a_success_clears_the_account_and_gives_the_address_its_attempt_back(app):
    assert _sign_in(app, "owner@example.org", "wrong").status_code == 401
    assert _sign_in(app, "owner@example.org", PASSWORD).status_code == 302
    assert _row(app, "account:owner@example.org") is None
    assert _row(app, "address:10.0.0.1").failures == 1


def test_the_count_starts_afresh_after_the_window(app):
    threshold = app.config["BERTH_SIGN_IN_ACCOUNT_FAILURES"]
    for _ in range(threshold - 1):
        _sign_in(app, "owner@example.org", "wrong")
    with app.app_context():
        row = db.session.get(SignInThrottle, "account:owner@example.org")
        row.window_started_at -= timedelta(seconds=app.config["BERTH_SIGN_IN_WINDOW_SECONDS"])
        db.session.commit()
    assert _sign_in(app, "owner@example.org", "wrong").status_code == 401
    row = _row(app, "account:owner@example.org")
    assert (row.failures, row.blocked_until) == (1, None)
