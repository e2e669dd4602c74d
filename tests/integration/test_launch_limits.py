"""The limits on live tools hold exactly when many launches arrive at once.

Every browser here opens its tools in several tabs at the same moment, and many browsers
(different users) do so together, against a Berth with small limits, on PostgreSQL and on
SQLite. However the requests interleave, no user ever has more live tools than
BERTH_MAX_TOOLS_PER_USER and Berth never more than BERTH_MAX_TOOLS_TOTAL: no instance is
stopped during the test, so every instance row ever created must fit under the limits.
"""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import DOMAIN, _make_stack

PER_USER, TOTAL = 1, 4
USERS = 8
# Two personal tools per user (so the per-user limit refuses one), and the shared board, which
# counts towards the global limit only.
TABS = ["echo", "echo-api", "board"]


@pytest.fixture(scope="module", params=["postgres", "sqlite"])
def limited_stack(request, dockerd, tmp_path_factory):
    limits = {"BERTH_MAX_TOOLS_PER_USER": str(PER_USER), "BERTH_MAX_TOOLS_TOTAL": str(TOTAL)}
    if request.param == "postgres":
        server, redis = request.getfixturevalue("postgres"), request.getfixturevalue("redis_server")
        stack = _make_stack("limits-pg", server.create_database(f"berth_limits_{os.urandom(3).hex()}"),
                            redis.url(5), tmp_path_factory.mktemp("limits"), dockerd.url, extra_env=limits)
    else:
        stack = _make_stack("limits-sqlite", None, None, tmp_path_factory.mktemp("limits"), dockerd.url,
                            extra_env=limits)
    stack.start()
    yield stack
    stack.stop()


def test_launches_at_once_never_exceed_the_per_user_and_global_limits(limited_stack):
    stack = limited_stack
    users = [stack.create_user() for _ in range(USERS)]
    browsers = [stack.login(user) for user in users]
    tabs = [(browser, user, slug) for browser, user in zip(browsers, users) for slug in TABS]
    for browser, user, slug in tabs:  # signed in on each tool host first: the race is the launch's
        host = f"board.{DOMAIN}" if slug == "board" else stack.tool_host(slug, user)
        browser.get(f"{stack.base_url}/auth/handoff", params={"host": host, "next": "/__berth/status"},
                    timeout=10)
    start = threading.Barrier(len(tabs))

    def open_tab(tab):
        browser, user, slug = tab
        start.wait()
        url = f"http://board.{DOMAIN}:{stack.port}/" if slug == "board" else stack.tool_url(slug, user)
        return browser.get(url, headers={"Sec-Fetch-Mode": "navigate"},
                           allow_redirects=False, timeout=30).status_code

    try:
        with ThreadPoolExecutor(max_workers=len(tabs)) as pool:
            statuses = list(pool.map(open_tab, tabs))
    finally:
        for browser in browsers:
            browser.close()

    # Every tab got an answer: the spawning page (202) or the limit's refusal (429), nothing else.
    assert set(statuses) <= {202, 429}, statuses
    instances = stack.query("SELECT owner_id, host FROM tool_instances")
    personal = [row for row in instances if not row["host"].startswith("board.")]
    per_owner = {}
    for row in personal:
        per_owner[row["owner_id"]] = per_owner.get(row["owner_id"], 0) + 1
    assert max(per_owner.values()) == PER_USER, per_owner
    # More was asked for than the limit allows, so exactly the limit was granted.
    assert len(instances) == TOTAL, instances
    assert statuses.count(202) >= TOTAL  # tabs of one shared board all see its one launch
