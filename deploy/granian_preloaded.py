"""granian, with the served app's modules imported once in its supervisor, before the workers fork.

    python -m deploy.granian_preloaded GRANIAN-OPTIONS... --factory module:factory

granian forks its workers from the supervisor process, and each worker then imports the app:
two auth workers held two private copies of Flask, SQLAlchemy and Berth's modules. Imported
here first, the workers share those pages with the supervisor copy-on-write, and gc.freeze()
keeps the collector from writing to (and so copying) them. Only modules are imported: the
factory still runs in each worker, which opens its own database connections, so nothing a
worker uses at run time is shared. With one worker there is no one to share with, and the pages
the worker writes to would be held twice: then nothing is imported here. granian's options and
behaviour are otherwise its own.
"""
import gc
import importlib
import sys

from granian.cli import entrypoint


def _following(arguments, option):
    """The argument after option (Berth's commands give granian's options their values so), or ""."""
    index = arguments.index(option) + 1 if option in arguments else len(arguments)
    return arguments[index] if index < len(arguments) else ""


def main():
    arguments = sys.argv[1:]
    target, workers = _following(arguments, "--factory"), _following(arguments, "--workers")
    if ":" in target and workers.isdigit() and int(workers) > 1:
        try:
            importlib.import_module(target.split(":", 1)[0])
        except Exception:  # noqa: BLE001 - only an optimisation: each worker imports it and says what failed
            pass
        gc.freeze()
    sys.argv[0] = "granian"
    return entrypoint()


if __name__ == "__main__":
    sys.exit(main())
