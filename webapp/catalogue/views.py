"""Main-host pages: the catalogue, its live state, and stopping a tool from it."""
from dataclasses import dataclass

from flask import (Blueprint, abort, current_app, flash, g, get_template_attribute, jsonify, make_response,
                   redirect, render_template, request)
from flask_wtf import FlaskForm
from wtforms import StringField
from sqlalchemy import func, select

from berth.access import grants_to, launchable_templates, may_launch
from berth.extensions import db
from berth.hosts import public_url, safe_relative_path, user_tool_host
from webapp.identity import login_required
from berth.launch.requests import LaunchRefused, request_launch, request_stop
from berth.models import Event, State, ToolInstance, ToolTemplate, User

bp = Blueprint("catalogue", __name__)

# While something is on its way (queued, starting, stopping) the page asks again this often;
# otherwise less often, to notice a tool that died or a change made in another tab.
BUSY_POLL_SECONDS = 1
STEADY_POLL_SECONDS = 10
TRANSIENT_STATES = (State.QUEUED, State.SPAWNING, State.STOPPING)


class LaunchForm(FlaskForm):
    size = StringField()


@dataclass
class Card:
    """One tool as the catalogue shows it: its latest run, and only the actions that can work now."""

    template: ToolTemplate
    url: str
    instance: ToolInstance | None
    owner: User | None = None  # set for a tool someone shared with the user
    step: str = ""  # the latest progress message of a launch under way

    @property
    def key(self):
        return f"shared:{self.url}" if self.owner is not None else f"tool:{self.template.slug}"

    @property
    def state(self):
        return self.instance.state if self.instance is not None else None

    @property
    def live(self):
        return self.state in State.LIVE

    @property
    def transient(self):
        return self.state in TRANSIENT_STATES

    @property
    def died(self):
        """A tool that ran, then stopped by itself (the reconciler found it gone)."""
        return self.state == State.FAILED and self.instance.running_at is not None

    @property
    def label(self):
        if self.owner is not None and not self.live:
            return "Not running"
        return {None: "", State.QUEUED: "Queued", State.SPAWNING: "Starting", State.RUNNING: "Running",
                State.STOPPING: "Stopping", State.STOPPED: "Stopped",
                State.FAILED: "Stopped unexpectedly" if self.died else "Failed"}[self.state]

    @property
    def badge(self):
        if self.owner is not None and not self.live:
            return "stopped"
        return (self.state or "").lower()

    @property
    def mine(self):
        return self.owner is None and not self.template.shared

    @property
    def may_open(self):
        # Opening a starting tool shows its progress; a stopping one cannot be opened until it
        # has stopped (its address would start it again on the way down).
        return self.state in (State.QUEUED, State.SPAWNING, State.RUNNING)

    @property
    def may_stop(self):
        # Only the person who owns a personal tool stops it here; shared ones are stopped by
        # the idle culler or an administrator.
        return self.mine and self.state in (State.QUEUED, State.SPAWNING, State.RUNNING)

    @property
    def may_launch(self):
        return self.owner is None and self.state in (None, State.STOPPED, State.FAILED)

    @property
    def error(self):
        """Why the last run failed, told to its owner only (never to those it is shared with)."""
        return self.instance.error if self.state == State.FAILED and self.owner is None else None

    @property
    def signature(self):
        """Changes whenever what the card shows changes: the page replaces only those cards."""
        instance = self.instance
        return "|".join(str(part) for part in (
            self.key, instance.id if instance else "", self.state, self.step, self.error or ""))


def _latest_instances(hosts):
    """The latest run of each of these hosts, whatever its state."""
    if not hosts:
        return {}
    latest = select(func.max(ToolInstance.id)).where(ToolInstance.host.in_(hosts)).group_by(ToolInstance.host)
    instances = db.session.execute(select(ToolInstance).where(ToolInstance.id.in_(latest))).scalars()
    return {instance.host: instance for instance in instances}


def _latest_steps(instances):
    """The latest progress message of each launch under way, by instance id."""
    ids = [instance.id for instance in instances if instance.state in (State.QUEUED, State.SPAWNING)]
    if not ids:
        return {}
    latest = select(func.max(Event.id)).where(Event.instance_id.in_(ids)).group_by(Event.instance_id)
    events = db.session.execute(select(Event).where(Event.id.in_(latest))).scalars()
    return {event.instance_id: event.message for event in events}


def catalogue_cards(user):
    """The user's cards: the tools they may launch (shared ones at their common address), and
    the tools others shared with them. Only hosts derived from the user's own access are read,
    so nobody learns the state of a tool they may not open."""
    config = current_app.config
    templates = launchable_templates(user)
    hosts = {template.id: user_tool_host(config, template, user)
             for template in templates}
    first_grant_by_host = {}  # a user may hold several grants to one tool (directly and by group)
    for grant in grants_to(user):
        first_grant_by_host.setdefault(grant.host, grant)
    latest = _latest_instances(list(hosts.values()) + list(first_grant_by_host))
    steps = _latest_steps(latest.values())

    def card(template, host, owner=None):
        instance = latest.get(host)
        return Card(template=template, url=public_url(config, host), instance=instance, owner=owner,
                    step=steps.get(instance.id, "") if instance is not None else "")

    tools = [card(template, hosts[template.id]) for template in templates]
    shared_with_me = [card(grant.template, host, owner=grant.owner) for host, grant in first_grant_by_host.items()]
    return tools, shared_with_me


def _poll_seconds(cards):
    return BUSY_POLL_SECONDS if _busy(cards) else STEADY_POLL_SECONDS


def _busy(cards):
    return any(card.transient for card in cards)


@bp.get("/")
@login_required
def index():
    tools, shared_with_me = catalogue_cards(g.user)
    return render_template("catalogue.html", tools=tools, shared_with_me=shared_with_me,
                           poll_seconds=_poll_seconds(tools + shared_with_me), busy=_busy(tools + shared_with_me),
                           single_user=current_app.config["BERTH_TOOL_ISOLATION"] == "single-user")


@bp.get("/catalogue/state")
@login_required
def state():
    """What the catalogue shows, for its script to update the page in place: each card's state
    and its markup, rendered by the same macro as the page."""
    tools, shared_with_me = catalogue_cards(g.user)
    render_card = get_template_attribute("_tool_card.html", "tool_card")
    response = jsonify(
        poll_seconds=_poll_seconds(tools + shared_with_me),
        cards=[{"list": "shared" if card.owner else "tools", "key": card.key, "state": card.state,
                "label": card.label, "name": card.template.name, "step": card.step, "error": card.error,
                "signature": card.signature, "html": str(render_card(card))}
               for card in tools + shared_with_me],
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _launchable(slug):
    """The enabled template slug names, which this user may launch: else 404 or a 403 page."""
    template = db.session.execute(
        select(ToolTemplate).where(ToolTemplate.slug == slug, ToolTemplate.enabled.is_(True))
    ).scalar_one_or_none()
    if template is None:
        abort(404)
    if not may_launch(g.user, template):
        abort(make_response(render_template(
            "message.html", title=f"{template.name} was not started",
            message=f"You are not in a group that may use {template.name}."), 403))
    return template


@bp.get("/launch/<slug>")
@login_required
def confirm_launch(slug):
    """Start a tool? A link from another site (or another tool) to a tool that is not running
    lands here, so that only a click on Berth's own page starts it (webapp/lifecycle)."""
    template = _launchable(slug)
    next_path = safe_relative_path(request.args.get("next", "/")) or "/"
    host = user_tool_host(current_app.config, template, g.user)
    return render_template("launch_confirm.html", template=template, form=LaunchForm(), next_path=next_path,
                           address=public_url(current_app.config, host, next_path))


@bp.post("/launch/<slug>")
@login_required
def launch(slug):
    """Launch (with a chosen size, if any), then go to the tool's address (which shows its
    progress), at the path it was first opened at (next), if any."""
    form = LaunchForm()
    template = _launchable(slug)
    host = user_tool_host(current_app.config, template, g.user)
    try:
        request_launch(template, g.user, host, actor=f"user:{g.user.id}", size_name=form.size.data or None)
    except LaunchRefused as refusal:
        return render_template("message.html", title=f"{template.name} was not started",
                               message=refusal.reason), refusal.status
    next_path = safe_relative_path(request.args.get("next", "/")) or "/"
    return redirect(public_url(current_app.config, host, next_path))


@bp.post("/instances/<int:instance_id>/stop")
@login_required
def stop(instance_id):
    instance = db.session.get(ToolInstance, instance_id)
    if instance is None or instance.owner_id != g.user.id or instance.template.shared:
        abort(404)
    if request_stop(instance, actor=f"user:{g.user.id}"):
        flash(f"Stopping {instance.template.name}.")
    else:
        flash(f"{instance.template.name} was not running.")
    return redirect("/")
