"""The owner's sharing page for one of their tools: /sharing/<slug>."""
from flask import Blueprint, abort, current_app, flash, g, redirect, render_template
from flask_wtf import FlaskForm
from sqlalchemy import select
from wtforms import SelectField, StringField
from wtforms.validators import DataRequired

from berth.access import AccessRefused, add_grant, grants_on, may_launch, revoke_grant, sharing_suggestions
from webapp.api.schemas import MAX_ID
from berth.extensions import db
from berth.hosts import public_url, user_tool_host
from webapp.identity import login_required
from berth.launch.requests import latest_instance
from berth.models import Grant, ToolTemplate

bp = Blueprint("sharing", __name__, url_prefix="/sharing")


class GrantForm(FlaskForm):
    kind = SelectField(choices=[("user", "A person, by email"), ("group", "A group")])
    name = StringField(validators=[DataRequired(message="Enter an email address or a group name.")])


class RevokeForm(FlaskForm):
    pass


def own_tool(slug):
    """The signed-in user's personal tool of this template, and its host; 404 if there is none."""
    template = db.session.execute(select(ToolTemplate).where(ToolTemplate.slug == slug)).scalar_one_or_none()
    if template is None or template.shared or not may_launch(g.user, template):
        abort(404)
    return template, user_tool_host(current_app.config, template, g.user)


@bp.get("/<slug>")
@login_required
def page(slug, form=None, status=200):
    template, host = own_tool(slug)
    people, groups = sharing_suggestions(g.user)
    return render_template("sharing.html", template=template, url=public_url(current_app.config, host),
                           instance=latest_instance(host), grants=grants_on(host), people=people, groups=groups,
                           form=form or GrantForm(), revoke_form=RevokeForm()), status


@bp.post("/<slug>")
@login_required
def grant(slug):
    template, host = own_tool(slug)
    form = GrantForm()
    if not form.validate_on_submit():
        return page(slug, form=form, status=400)
    name = form.name.data.strip()
    try:
        added = add_grant(g.user, template, host, actor=f"user:{g.user.id}",
                          **({"email": name} if form.kind.data == "user" else {"group_name": name}))
    except AccessRefused as refusal:
        db.session.rollback()
        form.name.errors = [refusal.reason]
        return page(slug, form=form, status=refusal.status)
    db.session.commit()
    flash(f"{added.grantee} can now open your {template.name}.")
    return redirect(f"/sharing/{slug}")


@bp.post("/<slug>/<int:grant_id>/revoke")
@login_required
def revoke(slug, grant_id):
    template, host = own_tool(slug)
    found = db.session.get(Grant, grant_id) if grant_id <= MAX_ID else None
    if found is None or found.host != host:
        abort(404)
    grantee = found.grantee
    if revoke_grant(found, actor=f"user:{g.user.id}"):
        flash(f"{grantee} can no longer open your {template.name}.")
    db.session.commit()
    return redirect(f"/sharing/{slug}")
