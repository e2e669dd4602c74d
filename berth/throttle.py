"""Slowing down password guessing: per account, and per client address.

Every password sign-in first claims an attempt for its email ("account:<email>") and for its
client address ("address:<ip>"), in the sign_in_throttles table, so that any replica answers
alike. Claiming is one INSERT … ON CONFLICT DO UPDATE per key: it counts the attempt, and, once
the count reaches the threshold, sets when the next attempt may come (1 s, then twice as long
after each further attempt, up to BERTH_SIGN_IN_MAX_DELAY_SECONDS); an attempt before then
claims nothing and is refused. Counting before the password is checked is what keeps racing
guesses from slipping in while the first ones are still being checked. A sign-in that succeeds
gives its attempt back: the account's count is cleared, and the address's goes down by one, so
that only failures count.

Counts start afresh BERTH_SIGN_IN_WINDOW_SECONDS after the first one. An email with no account
is counted like any other, so the answers tell nothing of which emails have accounts.

Invalid API tokens ("token:<ip>") and failed single sign-on callbacks ("oidc:<ip>") are counted
per address in the same table, with the same ladder of waits, but only once they have failed
(count_failure): these requests are too frequent, or too cheap to check, to write before each
one. Before a token is even looked up, or a callback read, waiting() says whether its address
must still wait.
"""
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import case, delete, literal, null, select, update
from sqlalchemy.dialects import postgresql, sqlite

from berth.extensions import db
from berth.models import SignInThrottle, utcnow

FIRST_DELAY_SECONDS = 1

_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
_TABLE = SignInThrottle.__table__


def _at(moment):
    """A timestamp in SQL, stored as the table's own timestamps are (UTC, also on SQLite)."""
    return literal(moment, _TABLE.c.blocked_until.type)


@dataclass(frozen=True)
class Refusal:
    kind: str  # "account" or "address"
    retry_after: int  # whole seconds, at least 1


def _thresholds(config):
    return {"account": config["BERTH_SIGN_IN_ACCOUNT_FAILURES"],
            "address": config["BERTH_SIGN_IN_ADDRESS_FAILURES"]}


def delay(config, attempts, threshold):
    """The wait after attempts failed sign-ins in one window (seconds; 0 below threshold)."""
    if attempts < threshold:
        return 0
    return min(FIRST_DELAY_SECONDS * 2 ** min(attempts - threshold, 32), config["BERTH_SIGN_IN_MAX_DELAY_SECONDS"])


def _blocked_until(config, count, threshold, now):
    """SQL for when the next attempt may come once count (an SQL expression) attempts are made:
    a ladder of the few distinct delays, so that counting and blocking are one statement."""
    ceiling = config["BERTH_SIGN_IN_MAX_DELAY_SECONDS"]
    steps, attempts = [], threshold
    while delay(config, attempts, threshold) < ceiling:
        steps.append((count == attempts, _at(now + timedelta(seconds=delay(config, attempts, threshold)))))
        attempts += 1
    return case((count < threshold, null()), *steps, else_=_at(now + timedelta(seconds=ceiling)))


def _claim(config, key, threshold, now):
    """Count one attempt for key; False (nothing counted) while key must still wait."""
    window_over = _TABLE.c.window_started_at <= now - timedelta(seconds=config["BERTH_SIGN_IN_WINDOW_SECONDS"])
    count = case((window_over, 1), else_=_TABLE.c.failures + 1)
    insert = _INSERT[db.engine.dialect.name](_TABLE).values(
        key=key, failures=1, window_started_at=now,
        blocked_until=now + timedelta(seconds=FIRST_DELAY_SECONDS) if threshold <= 1 else None)
    statement = insert.on_conflict_do_update(
        index_elements=[_TABLE.c.key],
        set_={"failures": count,
              "window_started_at": case((window_over, _at(now)), else_=_TABLE.c.window_started_at),
              "blocked_until": _blocked_until(config, count, threshold, now)},
        where=_TABLE.c.blocked_until.is_(None) | (_TABLE.c.blocked_until <= now),
    ).returning(_TABLE.c.failures, _TABLE.c.blocked_until)
    return db.session.execute(statement).first()


def _give_back(key, threshold):
    """Uncount one attempt of key; below the threshold again, it need not wait."""
    remaining = SignInThrottle.failures - 1
    db.session.execute(
        update(SignInThrottle).where(SignInThrottle.key == key, SignInThrottle.failures > 0)
        .values(failures=remaining,
                blocked_until=case((remaining < threshold, null()), else_=SignInThrottle.blocked_until))
        .execution_options(synchronize_session=False))


def token_key(address):
    """The key that counts unknown API tokens from a client address."""
    return f"token:{address}"


def callback_key(address):
    """The key that counts failed single sign-on callbacks from a client address."""
    return f"oidc:{address}"


def keys(email, address):
    """The throttle keys of a sign-in attempt, in the order they are claimed."""
    return {"address": f"address:{address}", "account": f"account:{email.strip().lower()}"}


def claim_attempt(email, address):
    """Count a password sign-in attempt against email and address, before the password is
    checked. None when it may go ahead; a Refusal (nothing counted) when one of them must
    wait. The caller commits."""
    config = current_app.config
    thresholds, now, claimed = _thresholds(config), utcnow(), []
    for kind, key in keys(email, address).items():
        if _claim(config, key, thresholds[kind], now) is None:
            for earlier_kind, earlier_key in claimed:
                _give_back(earlier_key, thresholds[earlier_kind])
            return Refusal(kind, waiting(key, now) or FIRST_DELAY_SECONDS)
        claimed.append((kind, key))
    return None


def seconds_until(moment, now):
    """Whole seconds from now until moment, rounded up; 0 once it is past."""
    return max(0, int(-(-(moment - now).total_seconds() // 1)))


def waiting(key, now=None):
    """How many whole seconds key must still wait before its next attempt; 0 if none."""
    now = now or utcnow()
    until = db.session.scalar(select(SignInThrottle.blocked_until).where(SignInThrottle.key == key))
    return seconds_until(until, now) if until is not None and until > now else 0


def count_failure(key, threshold):
    """Count one failure (an invalid API token, a failed sign-on callback) for key, a client
    address's key. Returns the wait in whole seconds that this failure started, 0 when it started
    none, or None when key was waiting already (nothing is counted then). The caller commits."""
    now = utcnow()
    row = _claim(current_app.config, key, threshold, now)
    if row is None:
        return None
    return seconds_until(row.blocked_until, now) if row.blocked_until is not None else 0


def attempt_succeeded(email, address):
    """The attempt proved the password: the account's count is cleared, and the address's
    attempt given back. The caller commits. The rows are locked in claim_attempt's order, or
    racing sign-ins deadlock."""
    found = keys(email, address)
    _give_back(found["address"], _thresholds(current_app.config)["address"])
    db.session.execute(delete(SignInThrottle).where(SignInThrottle.key == found["account"])
                       .execution_options(synchronize_session=False))

