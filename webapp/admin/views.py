"""The admin pages: /admin/users, groups, templates, instances, usage and audit. Administrators only."""
import json
from functools import wraps

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from sqlalchemy import func, or_, select

from berth.accounts import create_local_user, groups_by_user, set_user_flags, temporary_password, user_sessions
from webapp.admin import reports
from webapp.api.schemas import MAX_ID
from webapp.admin.changes import (ChangeRefused, add_member, create_group, create_template, delete_group,
                                  group_counts, remove_member, set_local_groups, set_team_folder,
                                  set_template_enabled, templates_using, update_template)
from webapp.admin.forms import ActionForm, GroupForm, HomeDeletionForm, MemberForm, TemplateForm, UserForm
from berth.backends.teams import folder_name
from berth.extensions import db
from berth.launch.requests import (HomeDeletionRefused, instance_events, request_home_deletion, request_stop,
                                   storage_usage)
from berth.launch.upkeep import live_tools_of
from berth.models import Group, Membership, State, ToolInstance, ToolTemplate, User

bp = Blueprint("admin", __name__, url_prefix="/admin")


def admin_required(view):
    """401 for no one signed in (nginx sends browsers to sign in); a 403 page for non-administrators."""
    @wraps(view)
    def wrapped(*args, **kwargs):
        if g.user is None:
            abort(401)
        if not g.user.is_admin:
            return render_template("message.html", title="No access",
                                   message="These pages are for Berth's administrators."), 403
        return view(*args, **kwargs)

    return wrapped


def _actor():
    return f"admin:{g.user.id}"


def _redirect_with(message, endpoint, **values):
    """Show message on the page at endpoint, which the browser opens next (303: with a GET)."""
    flash(message)
    return redirect(url_for(endpoint, **values), code=303)


def _page_number():
    page = request.args.get("page", "1")
    return max(1, min(int(page), 100_000)) if page.isdigit() else 1


def _get(model, object_id):
    if not 1 <= object_id <= MAX_ID:  # beyond a 32-bit id, PostgreSQL would refuse the query
        abort(404)
    return db.session.get(model, object_id) or abort(404)


@bp.app_template_global()
def page_url(page):
    """This list's address at another page, keeping its filters."""
    return url_for(request.endpoint, **{**request.view_args, **request.args.to_dict(), "page": page})


@bp.app_template_filter("duration")
def duration(seconds):
    hours, rest = divmod(int(seconds), 3600)
    if hours:
        return f"{hours} h {rest // 60:02d} min"
    return f"{rest // 60} min {rest % 60:02d} s" if rest >= 60 else f"{rest} s"


@bp.app_template_filter("shown")
def shown(value):
    """An audit value as text: strings as they are, anything else as JSON, nothing as a dash."""
    if value is None:
        return "—"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


@bp.get("/")
@admin_required
def index():
    return redirect(url_for("admin.users"))


# -- users ------------------------------------------------------------------------------------

@bp.get("/users")
@admin_required
def users():
    search = (request.args.get("q") or "").strip()
    statement = select(User).order_by(User.email)
    if search:
        statement = statement.where(or_(func.lower(User.email).contains(search.lower(), autoescape=True),
                                        func.lower(User.name).contains(search.lower(), autoescape=True)))
    rows, more = reports.page_of(statement, _page_number())
    groups = groups_by_user(rows)
    homes = _usage("home", [person.host_key for person in rows])
    return render_template("admin/users.html", section="users", users=rows, more=more, page=_page_number(),
                           search=search, groups=groups, homes=homes)


@bp.route("/users/new", methods=["GET", "POST"])
@admin_required
def user_new():
    form = UserForm()
    chosen = {int(value) for value in request.form.getlist("group") if value.isdigit()}
    fields = form.account_fields() if request.method == "POST" else None
    if fields is not None:
        email, name, password = fields
        temporary = None if password else temporary_password()
        person = create_local_user(email, name, password or temporary, actor=_actor(), is_admin=form.is_admin.data)
        if person is None:
            form.email.errors = [form.taken(email)]
        else:
            set_local_groups(person, chosen, actor=_actor())
            db.session.commit()
            if temporary is None:
                return _redirect_with(f"{person.email} can now sign in with the password you chose.",
                                      "admin.user", user_id=person.id)
            # The temporary password is in this page alone: never in a redirect, a cookie or a log.
            page = render_template("admin/user_created.html", section="users", person=person, temporary=temporary)
            return page, 201, {"Cache-Control": "no-store"}
    invalid = any(field.errors for field in form)
    return render_template("admin/user_new.html", section="users", form=form, chosen=chosen,
                           all_groups=db.session.execute(select(Group).order_by(Group.name)).scalars().all()
                           ), 400 if invalid else 200


@bp.get("/users/<int:user_id>")
@admin_required
def user(user_id):
    person = _get(User, user_id)
    memberships = dict(db.session.execute(
        select(Membership.group_id, Membership.source).where(Membership.user_id == person.id)).all())
    all_groups = db.session.execute(select(Group).order_by(Group.name)).scalars().all()
    instances = db.session.execute(
        select(ToolInstance).where(ToolInstance.owner_id == person.id).order_by(ToolInstance.id.desc()).limit(10)
    ).scalars().all()
    return render_template("admin/user.html", section="users", person=person, memberships=memberships,
                           all_groups=all_groups, instances=instances, sessions=len(user_sessions(person)),
                           action_form=ActionForm())


def _usage(kind, names):
    """What each named home ("home") or team folder ("team") holds on disk, as the worker last
    measured it, or None where the process backend, which alone keeps them on this host, is off."""
    if "process" not in current_app.config["BERTH_BACKENDS"]:
        return None
    return storage_usage(kind, names)


@bp.get("/users/<int:user_id>/home/delete")
@admin_required
def home_delete_confirm(user_id, form=None, refusal=None, status=200):
    person = _get(User, user_id)
    return render_template("admin/home_delete.html", section="users", person=person, live=live_tools_of(person.id),
                           form=form or HomeDeletionForm(), refusal=refusal,
                           usage=(_usage("home", [person.host_key]) or {}).get(person.host_key),
                           backends=current_app.config["BERTH_BACKENDS"]), status


@bp.post("/users/<int:user_id>/home/delete")
@admin_required
def home_delete(user_id):
    person, form = _get(User, user_id), HomeDeletionForm()
    if (form.confirm.data or "").strip().lower() != person.email.lower():
        form.confirm.errors = [f"Type {person.email} to confirm: the home cannot be brought back but from a backup."]
        return home_delete_confirm(user_id, form=form, status=400)
    try:
        request_home_deletion(person, actor=_actor())
    except HomeDeletionRefused as refusal:
        return home_delete_confirm(user_id, form=form, refusal=str(refusal), status=409)
    return _redirect_with(f"The home of {person.email} is being deleted; the audit log records when it is gone.",
                          "admin.user", user_id=person.id)


@bp.post("/users/<int:user_id>/flags")
@admin_required
def user_flags(user_id):
    person = _get(User, user_id)
    is_active = {"1": True, "0": False}.get(request.form.get("is_active", ""))
    is_admin = {"1": True, "0": False}.get(request.form.get("is_admin", ""))
    if person.id == g.user.id and False in (is_active, is_admin):
        return _redirect_with("You cannot deactivate your own account or give up your own administration.",
                              "admin.user", user_id=person.id)
    set_user_flags(person, actor=_actor(), is_active=is_active, is_admin=is_admin)
    db.session.commit()
    return _redirect_with(
        f"{person.email} is {'active' if person.is_active else 'deactivated (and signed out everywhere)'}"
        f"{' and an administrator' if person.is_admin else ''}.", "admin.user", user_id=person.id)


@bp.post("/users/<int:user_id>/groups")
@admin_required
def user_groups(user_id):
    person = _get(User, user_id)
    ids = [int(value) for value in request.form.getlist("group") if value.isdigit()]
    changed = set_local_groups(person, ids, actor=_actor())
    db.session.commit()
    return _redirect_with(f"Groups of {person.email} saved." if changed else "The groups were unchanged.",
                          "admin.user", user_id=person.id, _anchor="groups")


# -- groups -----------------------------------------------------------------------------------

@bp.route("/groups", methods=["GET", "POST"])
@admin_required
def groups():
    form = GroupForm()
    status = 200
    if request.method == "POST":
        try:
            group = create_group(form.name.data, actor=_actor())
        except ChangeRefused as refusal:
            form.name.errors = [str(refusal)]
            status = 400
        else:
            db.session.commit()
            return _redirect_with(f"Group {group.name} created.", "admin.group", group_id=group.id)
    rows, more = reports.page_of(select(Group).order_by(Group.name), _page_number())
    folders = _usage("team", [folder_name(team) for team in rows if team.team_folder])
    return render_template("admin/groups.html", section="groups", groups=rows, more=more, page=_page_number(),
                           counts=group_counts(), form=form, folders=folders, folder_name=folder_name), status


@bp.get("/groups/<int:group_id>")
@admin_required
def group(group_id, member_form=None, status=200):
    team = _get(Group, group_id)
    members = db.session.execute(
        select(User, Membership.source).join(Membership, Membership.user_id == User.id)
        .where(Membership.group_id == team.id).order_by(User.email)
    ).all()
    # Suggestions for Add member: active users not in the group yet (a datalist, so a few hundred at most).
    others = db.session.execute(
        select(User.email).where(User.is_active, User.id.not_in(select(Membership.user_id)
                                                                 .where(Membership.group_id == team.id)))
        .order_by(User.email).limit(500)).scalars().all()
    folder = folder_name(team)
    usage = (_usage("team", [folder]) or {}).get(folder) if team.team_folder else None
    return render_template("admin/group.html", section="groups", group=team, members=members, others=others,
                           templates=templates_using(team), member_form=member_form or MemberForm(),
                           action_form=ActionForm(), folder=folder, usage=usage), status


@bp.post("/groups/<int:group_id>/team-folder")
@admin_required
def group_team_folder(group_id):
    team = _get(Group, group_id)
    enabled = {"1": True, "0": False}.get(request.form.get("enabled", ""))
    if enabled is None:
        return _redirect_with("Say whether to turn the team folder on or off.", "admin.group", group_id=team.id)
    changed = set_team_folder(team, enabled, actor=_actor())
    db.session.commit()
    if not changed:
        return _redirect_with("The team folder was unchanged.", "admin.group", group_id=team.id)
    return _redirect_with(
        f"Team folder of {team.name} turned {'on: members get it' if enabled else 'off: members lose it'} "
        "at their next launch" + ("." if enabled else "; its files are kept."), "admin.group", group_id=team.id)


@bp.post("/groups/<int:group_id>/members")
@admin_required
def group_add(group_id):
    form = MemberForm()
    team = _get(Group, group_id)
    email = (form.email.data or "").strip().lower()
    person = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
    try:
        if person is None:
            raise ChangeRefused(f"There is no user with the email {email!r}.")
        add_member(team, person, actor=_actor())
    except ChangeRefused as refusal:
        form.email.errors = [str(refusal)]
        return group(group_id, member_form=form, status=400)
    db.session.commit()
    return _redirect_with(f"{person.email} added to {team.name}.", "admin.group", group_id=team.id)


@bp.post("/groups/<int:group_id>/members/<int:user_id>/remove")
@admin_required
def group_remove(group_id, user_id):
    team, person = _get(Group, group_id), _get(User, user_id)
    try:
        remove_member(team, person, actor=_actor())
    except ChangeRefused as refusal:
        return _redirect_with(str(refusal), "admin.group", group_id=team.id)
    db.session.commit()
    return _redirect_with(f"{person.email} removed from {team.name}.", "admin.group", group_id=team.id)


@bp.post("/groups/<int:group_id>/delete")
@admin_required
def group_delete(group_id):
    team = _get(Group, group_id)
    try:
        delete_group(team, actor=_actor())
    except ChangeRefused as refusal:
        return _redirect_with(str(refusal), "admin.group", group_id=team.id)
    db.session.commit()
    return _redirect_with(f"Group {team.name} deleted.", "admin.groups")


# -- templates --------------------------------------------------------------------------------

def _group_names():
    return db.session.execute(select(Group.name).order_by(Group.name)).scalars().all()


@bp.get("/templates")
@admin_required
def templates():
    rows, more = reports.page_of(select(ToolTemplate).order_by(ToolTemplate.name), _page_number())
    return render_template("admin/templates.html", section="templates", templates=rows, more=more,
                           page=_page_number(), action_form=ActionForm())


@bp.route("/templates/new", methods=["GET", "POST"])
@admin_required
def template_new():
    form = TemplateForm()
    if request.method == "POST":
        fields = form.template_fields()
        if fields is not None:
            try:
                template = create_template(fields, actor=_actor())
            except ChangeRefused as refusal:
                form.slug.errors = [str(refusal)]
            else:
                db.session.commit()
                return _redirect_with(f"Template {template.name} created.", "admin.templates")
    return _template_page(form, None)


@bp.route("/templates/<int:template_id>", methods=["GET", "POST"])
@admin_required
def template_edit(template_id):
    template = _get(ToolTemplate, template_id)
    form = TemplateForm()
    if request.method == "GET":
        form.fill_from(template)
    else:
        fields = form.template_fields(slug=template.slug)
        if fields is not None:
            changed = update_template(template, fields, actor=_actor())
            db.session.commit()
            return _redirect_with(f"Template {template.name} saved: {', '.join(changed)} changed." if changed else
                                  f"Template {template.name} was unchanged.", "admin.templates")
        form.slug.data = template.slug
    return _template_page(form, template)


def _template_page(form, template):
    invalid = any(field.errors for field in form)
    return render_template("admin/template_form.html", section="templates", form=form, template=template,
                           group_names=_group_names()), 400 if invalid else 200


@bp.post("/templates/<int:template_id>/enabled")
@admin_required
def template_enabled(template_id):
    template = _get(ToolTemplate, template_id)
    enabled = request.form.get("enabled") == "1"
    set_template_enabled(template, enabled, actor=_actor())
    db.session.commit()
    return _redirect_with(f"{template.name} is enabled: it is in the catalogue." if enabled else
                          f"{template.name} is disabled: it has left the catalogue.", "admin.templates")


# -- instances --------------------------------------------------------------------------------

@bp.get("/instances")
@admin_required
def instances():
    conditions, errors = reports.instance_filters(request.args)
    rows, more = reports.page_of(select(ToolInstance).where(*conditions).order_by(ToolInstance.id.desc()),
                                 _page_number())
    slugs = db.session.execute(select(ToolTemplate.slug).order_by(ToolTemplate.slug)).scalars().all()
    return render_template("admin/instances.html", section="instances", instances=rows, more=more,
                           page=_page_number(), errors=errors, slugs=slugs,
                           states=("LIVE",) + State.LIVE + State.ENDED, action_form=ActionForm())


@bp.get("/instances/<int:instance_id>")
@admin_required
def instance(instance_id):
    found = _get(ToolInstance, instance_id)
    return render_template("admin/instance.html", section="instances", instance=found,
                           events=instance_events(found, limit=500), action_form=ActionForm())


@bp.post("/instances/<int:instance_id>/stop")
@admin_required
def instance_stop(instance_id):
    found = _get(ToolInstance, instance_id)
    message = (f"Stopping {found.template.name} of {found.owner.email}." if request_stop(found, actor=_actor())
               else f"{found.template.name} of {found.owner.email} was not running.")
    if request.form.get("back") == "instance":
        return _redirect_with(message, "admin.instance", instance_id=found.id)
    return _redirect_with(message, "admin.instances")


# -- usage and audit --------------------------------------------------------------------------

@bp.get("/usage")
@admin_required
def usage():
    period = reports.DateRange(request.args)
    by_user, by_template = reports.usage(period)
    return render_template("admin/usage.html", section="usage", period=period, by_user=by_user,
                           by_template=by_template), 400 if period.errors else 200


@bp.get("/usage.csv")
@admin_required
def usage_csv():
    period = reports.DateRange(request.args)
    if period.errors:
        abort(400, " ".join(period.errors.values()))
    by = request.args.get("by", "user")
    if by not in ("user", "template"):
        abort(400, "by must be user or template.")
    rows = reports.usage(period)[0 if by == "user" else 1]
    return reports.csv_response(
        f"berth-usage-by-{by}-{period.first}-{period.last}.csv",
        [by, "launches", "run_seconds", "run_hours"],
        ([row["label"], row["launches"], row["run_seconds"], f"{row['run_seconds'] / 3600:.2f}"] for row in rows))


@bp.get("/audit")
@admin_required
def audit():
    period = reports.DateRange(request.args)
    conditions, errors = reports.audit_filters(request.args, period)
    rows, more = reports.page_of(reports.audit_events(conditions), _page_number())
    return render_template("admin/audit.html", section="audit", events=rows, more=more, page=_page_number(),
                           period=period, errors=errors, kinds=reports.event_kinds(),
                           emails=reports.user_emails(event.user_id for event in rows),
                           actors=reports.actor_emails(event.actor for event in rows),
                           steps=reports.launch_steps(rows),
                           csv_query={key: value for key, value in request.args.items() if key != "page"}
                           ), 400 if errors else 200


@bp.get("/audit.csv")
@admin_required
def audit_csv():
    period = reports.DateRange(request.args)
    conditions, errors = reports.audit_filters(request.args, period)
    if errors:
        abort(400, " ".join(errors.values()))
    return reports.csv_response(f"berth-audit-{period.first}-{period.last}.csv", reports.AUDIT_HEADER,
                                reports.audit_rows(conditions))


# -- status -----------------------------------------------------------------------------------

@bp.get("/status")
@admin_required
def status():
    from berth.launch.tasks import huey
    from berth.status import gather

    facts = gather(current_app.config, huey, request.headers.get("X-Berth-Nginx"))
    return render_template("admin/status.html", section="status", **facts)
