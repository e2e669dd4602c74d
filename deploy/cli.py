"""`berth`: the operator's command line.

    berth check                         check the settings, catalogue, database and Redis
    berth db upgrade                    apply migrations (run once per release, as its own job)
    berth catalogue load FILE           upsert tool templates from YAML, all or nothing
    berth create-admin EMAIL --password P
    berth create-user EMAIL --password P
    berth nginx-conf [--standalone --prefix DIR] [--out FILE]
    berth local-certificate [--exports] a CA of this machine's own, and a wildcard certificate from it
    berth run                           the embedded default: nginx, auth, web and worker together

A plain click group, not Flask's: the commands that need the app build it (with_appcontext, from
the ScriptInfo the group hands them), and Flask's development options stay out of `--help`. An
error an operator can fix (a setting, the database or Redis out of reach, no schema yet) ends the
command with one line naming it (deploy/checks.py), never a traceback.
"""
import os
import sys

import click
from flask import current_app
from flask.cli import ScriptInfo, with_appcontext
from sqlalchemy import func, select

from berth.accounts import email_problem, password_problem
from berth.extensions import db, migrate
from berth.web import create_base_app
from berth.models import User, record_event


def _create_app():
    app = create_base_app("berth.cli")
    migrate.bind(app)  # `berth db …`: Flask-Migrate is imported only for the CLI (berth/extensions.py)
    return app


class BerthGroup(click.Group):
    """Berth's commands, listed in the order they are defined, each failing in one line."""

    def make_context(self, info_name, args, parent=None, **extra):
        extra.setdefault("obj", ScriptInfo(create_app=_create_app, set_debug_flag=False,
                                           load_dotenv_defaults=False))
        return super().make_context(info_name, args, parent=parent, **extra)

    def list_commands(self, ctx):
        return list(self.commands)

    def invoke(self, ctx):
        from deploy.checks import operator_message

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            message = operator_message(error)
            if message is None:
                raise
            raise click.ClickException(message) from None


@click.group(cls=BerthGroup)
def cli():
    """Berth: operator commands. Settings come from BERTH_* environment variables
    (docs/configuration.md); `berth check` checks them."""


@cli.command("check", short_help="Check the settings, catalogue, database and Redis.")
def check():
    """Check every setting, the catalogue (BERTH_CATALOGUE), and that the database (with the
    newest schema) and Redis answer, within a few seconds each. Starts nothing. Prints one line per
    problem and exits 1 if there is any."""
    from berth.settings import load_settings, setting_problems
    from deploy.checks import catalogue_problems, database_problems, redis_problems

    problems = setting_problems(os.environ)
    if not problems:
        config = load_settings(os.environ)
        problems += catalogue_problems(config["BERTH_CATALOGUE"])
        problems += database_problems(config)
        problems += redis_problems(config["BERTH_REDIS_URL"])
    for problem in problems:
        click.echo(problem, err=True)
    if problems:
        raise SystemExit(1)
    click.echo("Berth's configuration is good: settings, catalogue, database and Redis.")


def _database_commands():
    """Flask-Migrate's `berth db` group (upgrade, downgrade, current, …)."""
    from flask_migrate.cli import db as database

    database.short_help = "Database migrations: berth db upgrade."
    return database


cli.add_command(_database_commands())


@cli.group(short_help="Tool templates: berth catalogue load FILE.")
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
        click.echo("\n".join(error.lines(path)), err=True)
        raise click.ClickException("Nothing was loaded.") from None
    click.echo(f"Catalogue loaded from {path}: {created} new, {updated} changed.")


def _save_user(email, password, is_admin):
    email = email.strip().lower()
    problem = email_problem(email) or password_problem(password)
    if problem:
        raise click.ClickException(problem)
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

    @cli.command(name, help=f"Create {who} with a local password (or reset an existing one).",
                 short_help=f"Create {who}, or reset their password.")
    @click.argument("email")
    @click.option("--password", required=True, help="At least 8 characters.")
    @with_appcontext
    def save_account(email, password):
        _save_user(email, password, is_admin=is_admin)

    return save_account


create_admin = _account_command("create-admin", is_admin=True, who="an administrator")
create_user = _account_command("create-user", is_admin=False, who="a user")


@cli.command("nginx-conf", short_help="Render nginx's configuration.")
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


@cli.command("local-certificate", short_help="An HTTPS certificate from a local CA.")
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


@cli.command("reconcile", short_help="Make the database and the backends agree now.")
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


@cli.command("cull", short_help="Stop idle tools now.")
@with_appcontext
def cull():
    """Stop idle tools now (the worker also does this every minute)."""
    from berth.launch import tasks
    from berth.launch.upkeep import cull_idle

    stopped = cull_idle(enqueue_stop=tasks.enqueue_stop, actor="culler")
    click.echo(f"Stopping idle instances: {', '.join(map(str, stopped))}" if stopped else "No idle tools.")


@cli.command("run", short_help="Run the whole of Berth on this machine (Ctrl-C stops it).")
@with_appcontext
def run():
    """Run everything on this machine: migrate, load the catalogue, start nginx, auth, web, worker."""
    from deploy.local import run_local

    run_local(current_app.config)


@cli.command("settings-doc", short_help="Print the configuration reference (Markdown).")
def settings_doc():
    """Print the configuration reference, docs/configuration.md, from the settings' definition."""
    from berth.settings import reference

    sys.stdout.write(reference())

