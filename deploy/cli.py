"""`berth`: the operator's command line (a Flask CLI group).

    berth db upgrade                    apply migrations (run once per release, as its own job)
    berth catalogue load FILE           upsert tool templates from YAML, all or nothing
    berth create-admin EMAIL --password P
    berth create-user EMAIL --password P
    berth nginx-conf [--standalone --prefix DIR] [--out FILE]
    berth local-certificate [--exports] a CA of this machine's own, and a wildcard certificate from it
    berth run                           the embedded default: nginx, auth, web and worker together
"""
import sys

import click
from flask import current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import func, select

from berth.extensions import db, migrate
from berth.web import create_base_app
from berth.models import User, record_event


def _create_app(*_args, **_kwargs):
    from berth.settings import SettingError

    try:
        app = create_base_app("berth.cli")
    except SettingError as error:
        # A bad BERTH_* value: say which and stop, without a traceback, whichever path asked
        # for the app (Flask prints other exceptions in `berth --help` as tracebacks).
        click.echo(f"Error: {error}", err=True)
        raise SystemExit(1) from None
    migrate.bind(app)  # `berth db …`: Flask-Migrate is imported only for the CLI (berth/extensions.py)
    return app


@click.group(cls=FlaskGroup, create_app=_create_app, add_default_commands=False,
             add_version_option=False, load_dotenv=False, set_debug_flag=False)
def cli():
    """Berth: operator commands. Settings come from BERTH_* environment variables."""


@cli.group()
def catalogue():
    """Tool templates."""


@catalogue.command("load")
@click.argument("path", type=click.Path(dir_okay=False))
@with_appcontext
def catalogue_load(path):
    """Upsert the tool templates in PATH (YAML). Nothing is written if any entry is invalid."""
    from berth.catalogue import CatalogueError, load_catalogue

    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as error:
        raise click.ClickException(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise click.ClickException(f"cannot read {path}: it is not UTF-8 text. Nothing was loaded.") from None
    try:
        created, updated = load_catalogue(text)
    except CatalogueError as error:
        raise click.ClickException(f"{path}: {error}. Nothing was loaded.") from None
    click.echo(f"Catalogue loaded from {path}: {created} new, {updated} changed.")


def _save_user(email, password, is_admin):
    email = email.strip().lower()
    if "@" not in email or len(email) > 320:
        raise click.ClickException(f"{email!r} is not an email address.")
    if len(password) < 8:
        raise click.ClickException("The password must have at least 8 characters.")
    user = db.session.execute(select(User).where(func.lower(User.email) == email)).scalar_one_or_none()
    created = user is None
    if created:
        user = User(email=email, name=email.split("@")[0])
        db.session.add(user)
    user.set_password(password)
    user.is_admin = user.is_admin or is_admin
    user.is_active = True
    db.session.flush()
    record_event("user.created" if created else "user.updated", f"{email} saved from the command line",
                 actor="cli", user_id=user.id, is_admin=user.is_admin)
    db.session.commit()
    click.echo(f"{'Created' if created else 'Updated'} {'admin' if user.is_admin else 'user'} {email}.")


def _account_command(name, is_admin, who):
    """`berth create-admin` and `berth create-user`: the same command but for the administrator flag."""

    @cli.command(name, help=f"Create {who} with a local password (or reset an existing one).")
    @click.argument("email")
    @click.option("--password", required=True, help="At least 8 characters.")
    @with_appcontext
    def save_account(email, password):
        _save_user(email, password, is_admin=is_admin)

    return save_account


create_admin = _account_command("create-admin", is_admin=True, who="an administrator")
create_user = _account_command("create-user", is_admin=False, who="a user")


@cli.command("nginx-conf")
@click.option("--standalone", is_flag=True, help="A complete nginx.conf, not just the http-level part.")
@click.option("--prefix", type=click.Path(file_okay=False), help="nginx's prefix, with --standalone.")
@click.option("--listen", help="nginx's listen address. Default: BERTH_HTTP_PORT.")
@click.option("--auth-server", "auth_servers", multiple=True, help="host:port of an auth replica.")
@click.option("--web-server", "web_servers", multiple=True, help="host:port of a web replica.")
@click.option("--out", type=click.Path(dir_okay=False), help="Write here instead of stdout.")
@with_appcontext
def nginx_conf(standalone, prefix, listen, auth_servers, web_servers, out):
    """Render nginx's configuration for this domain and these ports."""
    from berth.settings import SettingError
    from berth.nginx_conf import prepare_prefix, render_nginx

    if standalone and not prefix:
        raise click.ClickException("--standalone needs --prefix.")
    if prefix:
        try:
            prepare_prefix(prefix)
        except OSError as error:
            raise click.ClickException(f"cannot prepare --prefix {prefix}: {error.strerror}") from None
    try:
        text = render_nginx(current_app.config, listen=listen, auth_servers=list(auth_servers),
                            web_servers=list(web_servers), standalone=standalone, prefix=prefix)
    except SettingError as error:
        raise click.ClickException(str(error)) from None
    if out:
        try:
            with open(out, "w", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as error:
            raise click.ClickException(f"cannot write {out}: {error.strerror}") from None
    else:
        sys.stdout.write(text)


@cli.command("local-certificate")
@click.option("--exports", is_flag=True, help="Print only `export BERTH_TLS_CERTIFICATE=… BERTH_TLS_KEY=…`.")
@with_appcontext
def local_certificate(exports):
    """A certificate for BERTH_DOMAIN, *.BERTH_DOMAIN (and *.BERTH_TOOLS_DOMAIN), from a CA of this
    machine's own in BERTH_DATA_DIR/tls, made on first use: HTTPS where no public CA vouches."""
    import os
    import shlex
    import subprocess

    from deploy.certificates import LocalCA

    config = current_app.config
    try:
        ca = LocalCA(os.path.join(config["BERTH_DATA_DIR"], "tls"), days=365)
        chain, key = ca.issue(config["BERTH_DOMAIN"], [config["BERTH_TOOLS_DOMAIN"]] if config["BERTH_TOOLS_DOMAIN"] else [])
    except FileNotFoundError:
        raise click.ClickException("openssl is not installed (apt-get install openssl)") from None
    except subprocess.CalledProcessError as error:
        raise click.ClickException(f"openssl failed: {error.stderr.decode(errors='replace').strip()}") from None
    if exports:  # for a shell's eval; what people read goes to stderr
        click.echo(f"export BERTH_TLS_CERTIFICATE={shlex.quote(str(chain))} BERTH_TLS_KEY={shlex.quote(str(key))}")
    else:
        click.echo(f"BERTH_TLS_CERTIFICATE={chain}\nBERTH_TLS_KEY={key}")
    click.echo(f"Browsers trust it once they trust the CA, {ca.certificate}; Chromium, for example, with\n"
               f"  --ignore-certificate-errors-spki-list={ca.spki_hash()}", err=exports)


@cli.command("reconcile")
@with_appcontext
def reconcile():
    """Make the database and the backends agree now (the worker also does this every minute)."""
    from berth.launch import tasks
    from berth.launch.upkeep import reconcile as run_reconcile

    # The audit log names what acted, the reconciler, whoever ran it and however.
    actions = run_reconcile(enqueue_launch=tasks.enqueue_launch, enqueue_stop=tasks.enqueue_stop,
                            actor="reconciler")
    click.echo("\n".join(f"{action}: instance {instance_id}" for action, instance_id in actions)
               or "Nothing to do.")


@cli.command("cull")
@with_appcontext
def cull():
    """Stop idle tools now (the worker also does this every minute)."""
    from berth.launch import tasks
    from berth.launch.upkeep import cull_idle

    stopped = cull_idle(enqueue_stop=tasks.enqueue_stop, actor="culler")
    click.echo(f"Stopping idle instances: {', '.join(map(str, stopped))}" if stopped else "No idle tools.")


@cli.command("run")
@with_appcontext
def run():
    """Run everything on this machine: migrate, load the catalogue, start nginx, auth, web, worker."""
    from deploy.local import run_local

    run_local(current_app.config)


@cli.command("settings-doc", with_appcontext=False)
def settings_doc():
    """Print the configuration reference, docs/configuration.md, from the settings' definition."""
    from berth.settings import reference

    sys.stdout.write(reference())
