"""Spawner backends: where a tool actually runs.

Launch path: webapp (start page) → tasks.launch → launcher (the state machine) → a backend
here → the database records each result before the next step.

Every backend has the same small interface (see base.Backend). Each step is idempotent: run
again after a crash, it finds what it made before instead of making a second one.
"""
from webapp.spawners.base import Backend, LaunchFailed


def get_backend(name, config):
    if name == "process":
        from webapp.spawners.process import ProcessBackend

        return ProcessBackend(config)
    raise LaunchFailed(f"Unknown backend {name!r}. Berth knows: process.")


BACKEND_NAMES = ("process",)

__all__ = ["Backend", "LaunchFailed", "get_backend", "BACKEND_NAMES"]
