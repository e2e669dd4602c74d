"""Spawner backends: where a tool actually runs.

Launch path: webapp (start page) → launch.tasks → launch.state_machine → a backend
here → the database records each result before the next step.

Every backend has the same small interface (see base.Backend). Each step is idempotent: run
again after a crash, it finds what it made before instead of making a second one.
"""
from berth.backends.base import Backend, LaunchFailed


BACKEND_NAMES = ("process", "docker", "ecs")


def get_backend(name, config):
    """The backend called name, if this installation runs it (BERTH_BACKENDS)."""
    if name not in BACKEND_NAMES:
        raise LaunchFailed(f"Unknown backend {name!r}. Berth knows: {', '.join(BACKEND_NAMES)}.")
    if name not in config["BERTH_BACKENDS"]:
        raise LaunchFailed(f"The {name} backend is not enabled here (BERTH_BACKENDS).")
    if name == "docker":
        from berth.backends.docker import DockerBackend

        return DockerBackend(config)
    if name == "ecs":
        from berth.backends.ecs import EcsBackend

        return EcsBackend(config)
    from berth.backends.process import ProcessBackend

    return ProcessBackend(config)

__all__ = ["Backend", "LaunchFailed", "get_backend", "BACKEND_NAMES"]
