"""What a request that fails inside the web app or the auth service's pages gets: Berth's own
page (or JSON for the API), never a traceback or the framework's bare page; a connection lost
under the request is the database being unavailable (503 with Retry-After), not a bug
(berth/web/errors.py). SQLite in memory."""
import pytest
from sqlalchemy import exc

from berth.database import RETRY_AFTER_SECONDS
from berth.extensions import db
from berth.models import User
import auth_service
import webapp


def _bug():
    raise RuntimeError("secret detail of a bug")


def _lost_connection():
    raise exc.InterfaceError("SELECT 1", {}, Exception("the connection is lost"))


def _constraint():
    raise exc.IntegrityError("INSERT", {}, Exception("duplicate key value secret_detail"))


@pytest.fixture(params=[webapp, auth_service], ids=["webapp", "auth_service"])
def client(request, tmp_path):
    app = request.param.create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "BERTH_DATA_DIR": str(tmp_path)})
    for path, view in (("/bug", _bug), ("/api/bug", _bug), ("/lost", _lost_connection),
                       ("/constraint", _constraint)):
        app.add_url_rule(path, path, view)
    with app.app_context():
        db.create_all()
        user = User(email="ada@example.org", name="Ada")
        db.session.add(user)
        db.session.commit()
        client = app.test_client()
        client.environ_base.update(HTTP_X_BERTH_PROXY_SECRET=app.config["BERTH_PROXY_SECRET"],
                                   HTTP_X_BERTH_USER_ID=str(user.id))
        client.base = f"http://{app.config['BERTH_DOMAIN']}"
        yield client
        db.session.remove()
        db.engine.dispose()


@pytest.mark.parametrize("path", ["/bug", "/constraint"])
def test_a_bug_gets_berths_page_without_its_details(client, path, caplog):
    page = client.get(path, headers={"Accept": "text/html"}, base_url=client.base)
    assert page.status_code == 500
    text = page.get_data(as_text=True)
    assert "Something went wrong" in text and "<!doctype html>" in text.lower()
    assert "Content-Security-Policy" in page.headers  # Berth's page, with Berth's headers
    assert "secret" not in text and "Traceback" not in text
    assert "secret detail" in caplog.text or "secret_detail" in caplog.text  # logged for the operator


def test_a_bug_in_the_api_answers_json(client):
    answer = client.get("/api/bug", base_url=client.base)
    assert answer.status_code == 500
    assert answer.json == {"error": "Berth failed to answer this request. It has been logged; try again in a moment."}


def test_a_connection_lost_under_the_request_is_the_database_unavailable(client):
    page = client.get("/lost", headers={"Accept": "text/html"}, base_url=client.base)
    assert page.status_code == 503
    assert page.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert "Temporarily unavailable" in page.get_data(as_text=True)
