"""A Berth worker that kills itself with SIGKILL at one point of a launch, for the crash tests.

    python -m tests.crashing_worker <point> <huey_consumer's arguments>

runs huey_consumer in this process, with the launch state machine wrapped so that the process
dies at <point>, as a worker does when the kernel or the orchestrator kills it:

    before:<step>        before a backend's launch step runs (allocate, create, start, run_task)
    after:<step>         once that step's result, and the next step, are recorded
    before:wait_healthy  once the tool answers, before RUNNING is recorded
    after:RunTask        on the ecs backend, once AWS has started the task and before the step
                         returns it: the window that RunTask's clientToken and the tags exist for

arm(point) does the wrapping alone, for a test that runs the state machine in a process of its
own; start(processes, point) starts a stack's worker (deploy.local.Stack) as a crashing one.
Nothing of this is in Berth itself: the wrapping is done here, from outside.
"""
import os
import signal
import sys
from unittest import mock

from berth.backends.docker import DockerBackend
from berth.backends.ecs import EcsBackend
from berth.backends.process import ProcessBackend
from berth.launch import state_machine

STEPS = {step for backend in (ProcessBackend, DockerBackend, EcsBackend) for step in backend.steps}


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point):
    """Make this process SIGKILL itself at point (see above)."""
    when, _, step = point.partition(":")
    if point == "after:RunTask":
        _after_run_task()
    elif point == f"before:{state_machine.WAIT_STEP}":
        _once_healthy()
    elif when in ("before", "after") and step in STEPS:
        _around_step(when, step)
    else:
        raise ValueError(f"no crash point {point!r}: before:<step>, after:<step>, before:wait_healthy or "
                         f"after:RunTask, for a step of {sorted(STEPS)}")


def _around_step(when, step):
    run_step = state_machine._run_step

    def run_step_and_die(instance, backend, me):
        current = instance.step
        if when == "before" and current == step:
            _die()
        run_step(instance, backend, me)
        if when == "after" and current == step:
            _die()

    state_machine._run_step = run_step_and_die


def _once_healthy():
    get_backend = state_machine.get_backend

    def backend_that_dies_once_healthy(name, config):
        backend = get_backend(name, config)
        check_ready = backend.check_ready

        def check_ready_and_die(instance):
            address = check_ready(instance)
            if address:
                _die()
            return address

        backend.check_ready = check_ready_and_die
        return backend

    state_machine.get_backend = backend_that_dies_once_healthy


def _after_run_task():
    call = EcsBackend._call

    def call_and_die(self, operation, **params):
        answer = call(self, operation, **params)
        if operation == "run_task":
            _die()
        return answer

    EcsBackend._call = call_and_die


def command(point, consumer_command):
    """The command that runs consumer_command (huey_consumer and its arguments) as a crashing worker."""
    assert os.path.basename(consumer_command[0]) == "huey_consumer", consumer_command
    return [sys.executable, "-m", "tests.crashing_worker", point, *consumer_command[1:]]


def start(processes, point, name="worker"):
    """Start the worker of processes (a deploy.local.Stack) as one that dies at point."""
    usual = processes.command
    with mock.patch.object(processes, "command", lambda component: command(point, usual(component))):
        return processes.start(name)


if __name__ == "__main__":
    arm(sys.argv.pop(1))
    from huey.bin.huey_consumer import consumer_main

    consumer_main()
