"""The catalogue's cards: each state of a tool's latest run offers only the actions that can
work in it (webapp/catalogue/views.py Card), rendered by the macro that both the page and
/catalogue/state use."""
from types import SimpleNamespace

import pytest

from berth.models import State
from webapp import create_app
from webapp.catalogue.views import Card

URL = "http://echo-0a1b2c3d.berth.localhost/"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("cards")
    return create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{data_dir}/t.db", "TESTING": True})


def _template(shared=False, sizes=()):
    return SimpleNamespace(slug="echo", name="Echo", description="Says it back.", shared=shared, sizes=list(sizes))


def _instance(state, **fields):
    values = {"id": 7, "state": state, "size": {}, "error": None, "error_detail": None, "running_at": None}
    return SimpleNamespace(**{**values, **fields})


def _render(app, card):
    with app.test_request_context("/"):
        from flask import get_template_attribute

        return str(get_template_attribute("_tool_card.html", "tool_card")(card))


def _actions(card):
    return {name for name, offered in (("open", card.may_open), ("stop", card.may_stop),
                                       ("launch", card.may_launch)) if offered}


@pytest.mark.parametrize("state, label, actions", [
    (None, "", {"launch"}),
    (State.QUEUED, "Queued", {"open", "stop"}),
    (State.SPAWNING, "Starting", {"open", "stop"}),
    (State.RUNNING, "Running", {"open", "stop"}),
    (State.STOPPING, "Stopping", set()),
    (State.STOPPED, "Stopped", {"launch"}),
    (State.FAILED, "Failed", {"launch"}),
])
def test_each_state_offers_only_what_can_work(app, state, label, actions):
    card = Card(template=_template(), url=URL, instance=_instance(state) if state else None, step="Starting it")
    assert card.label == label
    assert _actions(card) == actions
    html = _render(app, card)
    assert ('>Open</a>' in html) == ("open" in actions)
    assert ('aria-label="Stop Echo"' in html) == ("stop" in actions)
    assert 'aria-label="Share Echo"' in html  # the sharing page is reachable whatever the state
    assert f'data-signature="{card.signature}"' in html


def test_a_starting_tool_shows_its_step_and_a_stopping_one_says_so(app):
    starting = Card(template=_template(), url=URL, instance=_instance(State.SPAWNING), step="Waiting for it to answer")
    assert "Waiting for it to answer" in _render(app, starting)
    stopping = Card(template=_template(), url=URL, instance=_instance(State.STOPPING))
    assert "Stopping…" in _render(app, stopping)


def test_a_failed_launch_shows_its_reason_and_a_retry_that_launches(app):
    card = Card(template=_template(), url=URL, instance=_instance(
        State.FAILED, error="exited with code 3", error_detail="<b>config</b> missing"))
    html = _render(app, card)
    assert "It did not start: exited with code 3" in html
    assert "&lt;b&gt;config&lt;/b&gt; missing" in html  # the tool's output, as text
    assert 'action="/launch/echo"' in html and ">Try again</button>" in html


def test_a_tool_that_died_says_so_with_its_last_lines(app):
    from datetime import datetime, timezone

    card = Card(template=_template(), url=URL, instance=_instance(
        State.FAILED, error="The process exited", error_detail="Traceback: boom",
        running_at=datetime.now(timezone.utc)))
    assert card.label == "Stopped unexpectedly"
    html = _render(app, card)
    assert "It stopped by itself: The process exited" in html
    assert "<summary>Last lines it wrote</summary>" in html and "Traceback: boom" in html


def test_a_tool_shared_with_the_user_is_opened_but_never_stopped_launched_or_shared(app):
    owner = SimpleNamespace(display_name="Ada")
    running = Card(template=_template(), url=URL, instance=_instance(State.RUNNING), owner=owner)
    assert _actions(running) == {"open"}
    assert 'aria-label="Share' not in _render(app, running)
    failed = Card(template=_template(), url=URL, instance=_instance(State.FAILED, error="secret reason"), owner=owner)
    assert failed.label == "Not running" and _actions(failed) == set()
    html = _render(app, failed)
    assert "Only Ada can start it." in html and "secret reason" not in html


def test_a_shared_template_is_opened_and_never_stopped_or_shared_by_a_user(app):
    card = Card(template=_template(shared=True), url=URL, instance=_instance(State.RUNNING))
    assert _actions(card) == {"open"}
    assert 'aria-label="Share' not in _render(app, card)


def test_the_address_wraps_at_dots_and_slashes_and_has_a_copy_button(app):
    html = _render(app, Card(template=_template(), url=URL, instance=None))
    assert "echo-0a1b2c3d.<wbr>berth.<wbr>localhost/<wbr>" in html
    assert f'data-copy="{URL}"' in html and 'aria-label="Copy the address of Echo"' in html
