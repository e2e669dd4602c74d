"""The docker backend against a real Docker engine, through nginx: launch, sizes, failures, reconcile."""
import threading
import time

import pytest
import websocket

from tests.actions import csrf_token, post_form, stop_instance
from tests.integration.test_launch import _host, _launch_until, _wait_state


def _container(stack, instance_id):
    with stack.docker() as client:
        found = client.containers.list(all=True, filters={"label": f"berth.instance={instance_id}"})
        return [(c.name, c.status, c.attrs["HostConfig"], c.labels) for c in found]


def test_busybox_container_is_served_through_nginx(stack, alice):
    browser = stack.login(alice)
    page = stack.open_tool(browser, "busybox", alice, "/index.html")
    assert page.status_code == 200
    assert "Hello from busybox" in page.text
    row = stack.instances(_host(stack, "busybox", alice))[-1]
    [(name, status, _, labels)] = _container(stack, row["id"])
    assert name == f"berth-{stack.env['BERTH_DEPLOYMENT']}-{row['id']}"
    assert status == "running"
    assert labels["berth.template"] == "busybox"
    assert labels["berth.owner"] == str(alice["id"])


def test_chosen_size_becomes_the_container_limits(stack, alice):
    browser = stack.login(alice)
    catalogue = browser.get(stack.base_url + "/")
    assert '<option value="large">' in catalogue.text
    launched = browser.post(f"{stack.base_url}/launch/busybox", allow_redirects=False,
                            data={"csrf_token": csrf_token(catalogue.text), "size": "large"})
    assert launched.status_code == 302
    assert launched.headers["Location"] == stack.tool_url("busybox", alice)
    row = _wait_state(stack, _host(stack, "busybox", alice), ("RUNNING",))
    [(_, _, host_config, _)] = _container(stack, row["id"])
    assert host_config["NanoCpus"] == 1_000_000_000
    assert host_config["Memory"] == 128 * 1024 * 1024
    assert host_config["Init"] is True


def test_unknown_size_is_refused_with_a_reason(stack, alice):
    browser = stack.login(alice)
    answer = post_form(browser, f"{stack.base_url}/launch/busybox", {"size": "huge"}, page=stack.base_url + "/")
    assert answer.status_code == 400
    assert "has no size" in answer.text
    assert stack.instances(_host(stack, "busybox", alice)) == []


def test_websocket_and_streaming_reach_a_container(stack, alice):
    browser = stack.login(alice)
    stack.open_tool(browser, "echo-docker", alice, "/headers", timeout=40)
    url = stack.tool_url("echo-docker", alice, "/ws").replace("http://", "ws://")
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.cookies)
    connection = websocket.create_connection(url, cookie=cookie, timeout=10)
    try:
        connection.send("through docker")
        assert connection.recv() == "through docker"
    finally:
        connection.close()
    body = b"x" * (5 * 1024 * 1024)
    uploaded = browser.post(stack.tool_url("echo-docker", alice, "/upload"), data=body).json()
    assert uploaded["bytes"] == len(body)
    downloaded = browser.get(stack.tool_url("echo-docker", alice, "/download?bytes=3000000"))
    assert len(downloaded.content) == 3_000_000


def test_missing_image_fails_with_a_clear_reason_and_never_hangs(stack, alice):
    failed = _launch_until(stack, stack.login(alice), "ghost", alice, ("FAILED",), timeout=30)
    assert "berth-test/does-not-exist:1" in failed["error"]
    assert "not on this Docker host" in failed["error"]
    assert _container(stack, failed["id"]) == []


@pytest.fixture
def running_busybox(stack, alice):
    """alice's busybox, running: her browser and its instance."""
    browser = stack.login(alice)
    stack.open_tool(browser, "busybox", alice, "/index.html")
    return browser, stack.instances(_host(stack, "busybox", alice))[-1]


def test_stop_removes_the_container(stack, running_busybox):
    browser, row = running_busybox
    stop_instance(browser, stack.base_url, row["id"])
    _wait_state(stack, row["host"], ("STOPPED",))
    assert _container(stack, row["id"]) == []


def test_reconciler_removes_an_orphan_container_and_fails_an_instance_whose_container_vanished(
        stack, running_busybox):
    _, row = running_busybox
    host = row["host"]
    with stack.docker() as client:
        client.containers.get(f"berth-{stack.env['BERTH_DEPLOYMENT']}-{row['id']}").remove(force=True)
        orphan = client.containers.create(
            "berth-test/busybox:1", ["sleep", "600"], name=f"berth-orphan-{time.monotonic_ns()}",
            labels={"berth.deployment": stack.env["BERTH_DEPLOYMENT"], "berth.instance": "999999"},
            network_mode="host", init=True)
        orphan.start()
        other_deployment = client.containers.create(
            "berth-test/busybox:1", ["sleep", "600"], name=f"berth-other-{time.monotonic_ns()}",
            labels={"berth.deployment": "someone-else", "berth.instance": "999999"}, network_mode="host")
    result = stack.berth("reconcile")
    assert result.returncode == 0, result.stderr
    # This command, or the worker's own reconciler (every 5 s) just before it, did each of these.
    events = stack.query("SELECT kind, instance_id FROM events WHERE actor = 'reconciler' ORDER BY id")
    assert (f"failed: instance {row['id']}" in result.stdout
            or {"kind": "reconcile.gone", "instance_id": row["id"]} in [dict(e) for e in events])
    assert ("orphan-removed: instance 999999" in result.stdout
            or "reconcile.orphan" in [e["kind"] for e in events])
    assert stack.instances(host)[-1]["state"] == "FAILED"
    # Removed by force, the container is killed first: the worker may see it stopped (exit code
    # 137) before the reconciler sees it gone. Either way the instance failed, saying why.
    error = stack.instances(host)[-1]["error"]
    assert "container is gone" in error or "container stopped (exit code 137)" in error, error
    with stack.docker() as client:
        names = [c.name for c in client.containers.list(all=True)]
        assert orphan.name not in names
        assert other_deployment.name in names  # another Berth's container is never touched
        client.containers.get(other_deployment.name).remove(force=True)
    kinds = [r["kind"] for r in stack.query("SELECT kind FROM events WHERE actor = 'reconciler' ORDER BY id")]
    assert "reconcile.gone" in kinds and "reconcile.orphan" in kinds


def test_removing_a_container_that_another_process_is_removing_counts_as_removed(stack):
    """The worker's reconciler and `berth reconcile` (or a stop and the reconciler) may remove
    the same container at once; the engine then answers the second "removal … already in
    progress" (409), which must not fail either of them."""
    from berth.backends.docker import DockerBackend

    with stack.docker() as client:
        for attempt in range(3):
            container = client.containers.run("berth-test/busybox:1", ["sleep", "600"], detach=True, init=True,
                                               name=f"berth-twice-{time.monotonic_ns()}", network_mode="none")
            failures = []

            def remove():
                try:
                    DockerBackend._remove(client.containers.get(container.id))
                except Exception as failure:  # noqa: BLE001 - what the test looks for
                    failures.append(failure)

            removers = [threading.Thread(target=remove) for _ in range(4)]
            for remover in removers:
                remover.start()
            for remover in removers:
                remover.join()
            assert failures == [], failures
            assert not client.containers.list(all=True, filters={"id": container.id})
