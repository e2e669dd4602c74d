"""What nginx tells the status page and /metrics about itself (X-Berth-Nginx: when its
configuration was rendered, which worker sent the request) comes from nginx alone: a client's
copy is refused at the door, and a scraper that reaches the web app directly cannot plant it."""
import os

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import _make_stack

TOKEN = "scrape-" + os.urandom(16).hex()
FORGED = "2001-01-01T00:00:00+00:00 1"


@pytest.fixture(scope="module")
def facts_stack(tmp_path_factory):
    stack = _make_stack("status-facts", None, None, tmp_path_factory.mktemp("facts"), "",
                        {"BERTH_BACKENDS": "process", "BERTH_METRICS_TOKEN": TOKEN})
    stack.start()
    yield stack
    stack.stop()


def test_a_client_cannot_tell_the_status_page_when_nginx_reloaded(facts_stack):
    stack = facts_stack
    admin = stack.create_user(is_admin=True)
    with stack.login(admin) as browser:
        answer = browser.get(f"{stack.base_url}/admin/status", headers={"X-Berth-Nginx": FORGED}, timeout=10)
        assert answer.status_code == 403
        assert "2001-01-01" not in answer.text
        assert "2001-01-01" not in browser.get(f"{stack.base_url}/admin/status", timeout=10).text


def _gauges(answer):
    return {sample.name: sample.value for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def test_a_scraper_cannot_plant_nginx_facts(facts_stack):
    stack = facts_stack
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Berth-Nginx": FORGED}
    through_nginx = _gauges(requests.get(f"{stack.base_url}/metrics", headers=headers, timeout=10))
    assert through_nginx["berth_nginx_config_rendered_timestamp_seconds"] > 978307200  # nginx's own, not 2001's
    direct = _gauges(requests.get(f"http://127.0.0.1:{stack.env['BERTH_WEB_PORT']}/metrics", headers=headers,
                                  timeout=10))
    assert "berth_nginx_config_rendered_timestamp_seconds" not in direct
    assert direct["berth_database_up"] == 1
