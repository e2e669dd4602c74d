"""Users from single sign-on (berth/accounts.py): matched on issuer and sub, kept up to date,
linked to an existing local account only at its owner's request or, when allowed, by a verified
email; groups from the groups claim, administrators from the admin group alone. SQLite in memory."""
import pytest
from sqlalchemy import select

from webapp import create_app
from berth.accounts import SignInRefused, link_identity, sync_groups, user_from_claims, user_groups
from berth.extensions import db
from berth.models import Event, Group, Membership, User

ISSUER = "https://id.example.org/realms/berth"


@pytest.fixture
def app():
    app = create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://", "TESTING": True})
    with app.app_context():
        db.create_all()
        yield app
        db.session.remove()
        db.engine.dispose()


def _claims(**extra):
    return {"sub": "abc-123", "email": "Ada@Example.org", "email_verified": True, "name": "Ada", **extra}


def _refusal(claims, groups_claim=None, **options):
    with pytest.raises(SignInRefused) as refused:
        user_from_claims(ISSUER, claims, groups_claim, **options)
    db.session.rollback()
    return refused.value


def test_a_first_sign_in_creates_the_user(app):
    user = user_from_claims(ISSUER, _claims())
    db.session.commit()
    assert (user.email, user.name, user.oidc_issuer, user.oidc_subject) == \
        ("ada@example.org", "Ada", ISSUER, "abc-123")
    assert user.password_hash is None and user.is_active and not user.is_admin
    assert db.session.scalar(select(Event.kind).where(Event.user_id == user.id)) == "user.create"


def test_the_user_is_matched_on_sub_and_kept_up_to_date(app):
    first = user_from_claims(ISSUER, _claims())
    db.session.commit()
    again = user_from_claims(ISSUER, _claims(email="ada.lovelace@example.org", name="Ada Lovelace"))
    db.session.commit()
    assert again.id == first.id
    assert (again.email, again.name) == ("ada.lovelace@example.org", "Ada Lovelace")
    # The same sub from another issuer is another person.
    other = user_from_claims("https://elsewhere.example.org", _claims(email="ada2@example.org"))
    assert other.id != first.id


def test_a_name_falls_back_to_preferred_username_then_the_email(app):
    assert user_from_claims(ISSUER, {"sub": "1", "email": "x@example.org", "preferred_username": "xy"}).name == "xy"
    assert user_from_claims(ISSUER, {"sub": "2", "email": "zed@example.org"}).name == "zed"


def test_an_email_taken_by_another_account_is_not_taken_over(app):
    db.session.add(User(email="boss@example.org", name="Boss"))
    user = user_from_claims(ISSUER, _claims())
    db.session.commit()
    same = user_from_claims(ISSUER, _claims(email="boss@example.org"))
    db.session.commit()
    assert same.email == "ada@example.org"
    assert db.session.scalar(select(Event.kind).where(Event.user_id == user.id, Event.kind == "user.email_conflict"))


def test_an_existing_account_is_never_linked_by_email_unless_allowed(app):
    local = User(email="ada@example.org", name="Local Ada")
    db.session.add(local)
    db.session.commit()
    assert _refusal(_claims()).kind == "email_taken"  # verified, but linking by email is off
    assert db.session.get(User, local.id).oidc_subject is None


def test_linking_by_email_when_allowed_needs_a_verified_email_no_other_identity_and_no_admin(app):
    local = User(email="ada@example.org", name="Local Ada")
    boss = User(email="boss@example.org", is_admin=True)
    db.session.add_all([local, boss])
    db.session.commit()
    assert _refusal(_claims(email_verified=False), link_by_email=True).kind == "email_taken"
    assert _refusal(_claims(email_verified="true"), link_by_email=True).kind == "email_taken"  # no promise
    assert _refusal(_claims(sub="b", email="boss@example.org"), link_by_email=True).kind == "email_taken"
    linked = user_from_claims(ISSUER, _claims(), link_by_email=True)
    db.session.commit()
    assert linked.id == local.id and linked.oidc_subject == "abc-123"
    # Another identity with the same email cannot take the account over.
    refusal = _refusal(_claims(sub="someone-else"), link_by_email=True)
    assert (refusal.kind, refusal.status) == ("email_taken", 409)


def test_the_owner_links_any_identity_that_is_nobody_elses(app):
    local = User(email="ada@example.org")
    db.session.add(local)
    db.session.commit()
    link_identity(local, ISSUER, _claims(email="ada.work@example.org"))
    db.session.commit()
    assert (local.oidc_issuer, local.oidc_subject) == (ISSUER, "abc-123")
    link_identity(local, ISSUER, _claims())  # again: nothing changes
    other = User(email="bob@example.org")
    db.session.add(other)
    db.session.commit()
    with pytest.raises(SignInRefused) as taken:
        link_identity(other, ISSUER, _claims())
    assert taken.value.kind == "identity_taken"
    with pytest.raises(SignInRefused) as linked:
        link_identity(local, ISSUER, _claims(sub="another"))
    assert linked.value.kind == "linked_already"


def test_only_the_admin_group_makes_an_administrator(app):
    # Each sign-in is a transaction of its own, as the callback commits it.
    signed_in = []
    for groups, admin_group in ((["admins", "Berth-Admins"], "berth-admins"), (["berth-admins"], "berth-admins"),
                                ([], "berth-admins"), ([], None)):
        if admin_group is None:  # without an admin group, single sign-on leaves administration alone
            db.session.get(User, signed_in[0]).is_admin = True
        user = user_from_claims(ISSUER, _claims(groups=groups, is_admin=True), "groups", admin_group=admin_group)
        db.session.commit()
        signed_in.append(user.id)
        assert user.is_admin is (groups == ["berth-admins"] or admin_group is None), groups


@pytest.mark.parametrize("claims, kind, status", [
    ({"email": "a@example.org"}, "bad_claim", 502),
    ({"sub": "", "email": "a@example.org"}, "bad_claim", 502),
    ({"sub": 5, "email": "a@example.org"}, "bad_claim", 502),
    ({"sub": "x" * 256, "email": "a@example.org"}, "bad_claim", 502),
    ({"sub": "new"}, "no_email", 403),
    ({"sub": "new", "email": "not-an-email"}, "no_email", 403),
    ({"sub": "new", "email": ["a@example.org"]}, "no_email", 403),
])
def test_unusable_claims_are_refused_with_a_reason(app, claims, kind, status):
    refusal = _refusal(claims)
    assert (refusal.kind, refusal.status) == (kind, status)
    assert refusal.message


def test_a_deactivated_user_is_refused(app):
    user = user_from_claims(ISSUER, _claims())
    user.is_active = False
    db.session.commit()
    refusal = _refusal(_claims())
    assert (refusal.kind, refusal.status, refusal.title) == ("deactivated", 403, "Account deactivated")


def test_groups_follow_the_claim_and_local_memberships_stay(app):
    user = user_from_claims(ISSUER, _claims(groups=["staff", "analysts", "staff", " "]), "groups")
    db.session.commit()
    assert user_groups(user) == ["analysts", "staff"]
    local = Group(name="admins-by-hand")
    db.session.add(local)
    db.session.flush()
    db.session.add(Membership(user_id=user.id, group_id=local.id, source="local"))
    db.session.commit()

    user_from_claims(ISSUER, _claims(groups="analysts"), "groups")  # one string is one group
    db.session.commit()
    assert user_groups(user) == ["admins-by-hand", "analysts"]
    user_from_claims(ISSUER, _claims(), "groups")  # no claim: no provider groups
    db.session.commit()
    assert user_groups(user) == ["admins-by-hand"]
    # Groups are shared: a second user joins the existing one.
    other = user_from_claims(ISSUER, _claims(sub="2", email="b@example.org", groups=["analysts"]), "groups")
    db.session.commit()
    assert db.session.scalars(select(Group.name).order_by(Group.name)).all() == \
        ["admins-by-hand", "analysts", "staff"]
    assert user_groups(other) == ["analysts"]


def test_groups_are_ignored_unless_a_claim_is_configured(app):
    user = user_from_claims(ISSUER, _claims(groups=["staff"]))
    assert user_groups(user) == []


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, 5, ["ok", None], [f"g{n}" for n in range(201)]])
def test_a_groups_claim_that_is_not_a_list_of_names_is_refused(app, value):
    refusal = _refusal(_claims(groups=value), "groups")
    assert (refusal.kind, refusal.status) == ("bad_claim", 502)


def test_sync_groups_is_idempotent(app):
    user = user_from_claims(ISSUER, _claims())
    sync_groups(user, ["a", "b"])
    sync_groups(user, ["a", "b"])
    db.session.commit()
    assert db.session.scalar(select(db.func.count()).select_from(Membership)) == 2


# -- address names ------------------------------------------------------------------------------

def test_every_way_of_making_a_user_gives_a_unique_address_name_that_never_changes(app):
    from berth.accounts import create_local_user

    by_sign_on = user_from_claims(ISSUER, _claims())
    by_admin = create_local_user("ADA@elsewhere.example", "", "a long password", actor="test")
    direct = User(email="ａｄａ@third.example", name="")
    db.session.add(direct)
    db.session.commit()
    assert [by_sign_on.address_name, by_admin.address_name, direct.address_name] == ["ada", "ada-2", "ada-3"]
    # A new email (or name) from the provider leaves the address alone.
    again = user_from_claims(ISSUER, _claims(email="lovelace@example.org", name="Lovelace"))
    db.session.commit()
    assert again.id == by_sign_on.id and again.address_name == "ada"


def test_an_address_name_taken_at_the_same_moment_is_no_email_clash(app, monkeypatch):
    """Two accounts made at once from the same base name: the one whose insert loses the race on
    the address name's unique index is made again with the next name, not refused as a taken email."""
    from berth import models
    from berth.accounts import create_local_user

    db.session.add(User(email="ada@one.example.org", address_name="ada"))
    db.session.commit()
    real = models.available_address_name
    answers = iter(["ada"])  # what a racing transaction had not yet committed when this one looked
    monkeypatch.setattr(models, "available_address_name",
                        lambda *args, **kwargs: next(answers, None) or real(*args, **kwargs))
    user = create_local_user("ada@two.example.org", "Ada", "a long password", actor="test")
    db.session.commit()
    assert user is not None and user.address_name == "ada-2"
    assert create_local_user("ada@two.example.org", "Ada", "a long password", actor="test") is None
