"""The placeholders a template's command and environment values may hold, filled in at launch.

    {port}    the port the tool must listen on (also in $PORT): on the process backend, and on
              docker with host networking, a loopback port Berth allocates; in a container on
              a network of its own (docker with BERTH_DOCKER_NETWORK) or an ECS task, the
              template's port, 8888 if it names none.
    {ip}      the address the tool must listen on: 0.0.0.0 in a namespace, container or task
              of its own (only nginx reaches it there), 127.0.0.1 where it shares the host's
              loopback (BERTH_TOOL_ISOLATION=single-user, BERTH_DOCKER_NETWORK=host).
    {python}  an interpreter that the tool's user may run: BERTH_TOOL_PYTHON with isolation,
              Berth's own Python in single-user mode. Process backend only: a container
              brings its own interpreter, so name it (python3).
    {home}    the owner's home, shared by all their tools and kept across launches, also $HOME
              and the working directory: <BERTH_HOMES_DIR>/<user> on the process backend,
              /home/berth (a named volume) in a docker container. Not on ECS yet.

A placeholder is a lower-case name in braces. Other braces are left as they are: JSON, Go
templates ({{.ID}}), and shell's ${name}. A name Berth does not fill, or one the template's
backend does not fill, is refused when the catalogue is loaded or the template saved
(placeholder_problem), and at launch (fill), for a template stored before that check.
"""
import re
import sys

from berth.backends.base import LaunchFailed

# Each placeholder, and the backends that fill it.
PLACEHOLDERS = {
    "port": ("process", "docker", "ecs"),
    "ip": ("process", "docker", "ecs"),
    "python": ("process",),
    "home": ("process", "docker"),
}
_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z_][a-z0-9_]*)\}")


def placeholder_problem(text, backend):
    """Why text holds a placeholder the backend cannot fill, or None if it holds none such."""
    for name in _PLACEHOLDER.findall(str(text)):
        if name not in PLACEHOLDERS:
            known = ", ".join(f"{{{known}}}" for known in PLACEHOLDERS)
            return f"{{{name}}} is not a placeholder Berth fills (it fills {known})"
        if backend not in PLACEHOLDERS[name]:
            backends = PLACEHOLDERS[name]
            return f"{{{name}}} is filled only on the {' and '.join(backends)} backend{'s' if len(backends) > 1 else ''}"
    return None


def fill(instance, port, home=None, python=None, ip="0.0.0.0"):
    """The command and environment of the instance's template, with the placeholders filled:
    (command, env), for the instance's backend, every backend alike.

    port, home, python and ip are what the placeholders stand for there.
    Raises LaunchFailed for a placeholder the backend does not fill.
    """
    template = instance.template
    values = {"port": str(port), "python": python or sys.executable, "home": str(home), "ip": ip}

    def filled(field, text):
        problem = placeholder_problem(text, instance.backend)
        if problem:
            raise LaunchFailed(f"The template's {field} cannot be filled in: {problem}.")
        return _PLACEHOLDER.sub(lambda match: values[match.group(1)], str(text))

    command = [filled("command", part) for part in template.command or []]
    env = {key: filled(f"env {key}", value) for key, value in (template.env or {}).items()}
    return command, env
