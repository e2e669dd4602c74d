"""Main-host pages: the catalogue, and stopping a tool from it."""
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template
from flask_wtf import FlaskForm
from wtforms import StringField
from sqlalchemy import select

from berth.access import grants_to, launchable_templates, may_launch
from berth.extensions import db
from berth.hosts import public_url, tool_host, tools_domain
from webapp.identity import login_required
from berth.launch.requests import LaunchRefused, live_instance, request_launch, request_stop
from berth.models import State, ToolInstance, ToolTemplate

bp = Blueprint("catalogue", __name__)


class StopForm(FlaskForm):
    pass


class LaunchForm(FlaskForm):
    size = StringField()


@bp.get("/")
@login_required
def index():
    """The tools this user may launch (shared ones at their common address), and those shared with them."""
    config = current_app.config
    domain = tools_domain(config)
    templates = launchable_templates(g.user)
    hosts = {template.id: tool_host(template.slug, None if template.shared else g.user.host_key, domain)
             for template in templates}
    live = db.session.execute(
        select(ToolInstance).where(ToolInstance.host.in_(hosts.values()), ToolInstance.state.in_(State.LIVE))
    ).scalars().all()
    live_by_host = {instance.host: instance for instance in live}
    tools = [
        {
            "template": template,
            "instance": live_by_host.get(hosts[template.id]),
            "url": public_url(config, hosts[template.id]),
            # Only the person who owns a personal tool stops it here; shared ones are stopped by
            # the idle culler or an administrator.
            "may_stop": not template.shared,
        }
        for template in templates
    ]
    first_grant_by_host = {}  # a user may hold several grants to one tool (directly and by group)
    for grant in grants_to(g.user):
        first_grant_by_host.setdefault(grant.host, grant)
    shared_with_me = [
        {"template": grant.template, "owner": grant.owner, "url": public_url(config, host),
         "instance": live_instance(host)}
        for host, grant in first_grant_by_host.items()
    ]
    return render_template("catalogue.html", tools=tools, shared_with_me=shared_with_me,
                           stop_form=StopForm(), launch_form=LaunchForm(),
                           single_user=config["BERTH_TOOL_ISOLATION"] == "single-user")


@bp.post("/launch/<slug>")
@login_required
def launch(slug):
    """Launch with a chosen size, then go to the tool's address (which shows its progress)."""
    form = LaunchForm()
    template = db.session.execute(
        select(ToolTemplate).where(ToolTemplate.slug == slug, ToolTemplate.enabled.is_(True))
    ).scalar_one_or_none()
    if template is None:
        abort(404)
    if not may_launch(g.user, template):
        return render_template("message.html", title=f"{template.name} was not started",
                               message=f"You are not in a group that may use {template.name}."), 403
    domain = tools_domain(current_app.config)
    host = tool_host(template.slug, None if template.shared else g.user.host_key, domain)
    try:
        request_launch(template, g.user, host, actor=f"user:{g.user.id}", size_name=form.size.data or None)
    except LaunchRefused as refusal:
        return render_template("message.html", title=f"{template.name} was not started",
                               message=refusal.reason), refusal.status
    return redirect(public_url(current_app.config, host))


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
