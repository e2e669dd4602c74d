"""Spawn time: from "start requested" to the first answer from the tool, through nginx.

    python -m bench.spawn [--launches 10] [--warmup 1] [--postgres] [--keep]

Two tools from the tests' catalogue (tests/catalogue.yml), on one Berth started through
deploy.local.Stack with both backends enabled:

  echo     the process backend: `python -m berth_tools.echo` on an allocated loopback port
  busybox  the docker backend: busybox httpd in a FROM-scratch image, host networking, on a
           dockerd of the run's own (tests/services.Dockerd; image built by tests/images.py)

One launch is timed from the first navigation GET of the stopped tool's address (which
creates the instance and answers with the starting page) to the first 200 that nginx proxies
from the tool itself. Between the two, the benchmark asks the tool's address every
--poll-ms (25) without navigation headers, which never launches anything: the web app answers
503 until the tool runs, then the tool answers. The tool is stopped between launches.
The tools take turns, so that drift on the machine falls on both.

Besides the end-to-end time, it reports two parts of it from the database: created →
started (until a worker took the launch from the queue) and started → RUNNING (the backend's
steps and the health probes, until the worker recorded RUNNING). Medians and p90 (nearest
rank) over the launches; warm-up launches are not counted. Results also go to
bench/results/spawn.json.

The peer, JupyterHub (unless --no-jupyterhub): a hub of the pinned version
(bench/jupyterhub-requirements.txt, installed on first use into bench/.jupyterhub-venv) with its
LocalProcessSpawner and configurable-http-proxy, starting the same echo tool with the same
Python. A JupyterHub launch is timed from the start request (POST /hub/api/users/<name>/server
with a service's API token, sent from a thread) to the first 200 that chp proxies from the tool
at /user/<name>/bench, polled every --poll-ms from the moment of the request, as for Berth. The
tool alone (its own start-up: the process started, polled directly every --poll-ms until its
first 200) is measured too, and subtracted from both to give each system's overhead. Berth's
echo, busybox, JupyterHub's echo and the tool alone take turns in every round.

Everything listens on 127.0.0.1. Every process the run starts (Berth's four, the tools,
dockerd and its containers, JupyterHub and its proxy, and PostgreSQL and Redis with --postgres)
is stopped on success, failure, Ctrl-C or SIGTERM.
"""
import argparse
import json
import math
import os
import statistics
import sys
import threading
import time
from datetime import datetime, timezone

import yaml

from bench._jupyterhub import JupyterHub, jupyterhub_version
from bench._stack import (ROOT, BenchRun, Berth, add_run_arguments, check_target, free_port, print_targets,
                          require, rotated, run_benchmark, stop_process, write_results)
from deploy.local import start_process

RESULTS = ROOT / "bench" / "results" / "spawn.json"
TOOLS = {  # slug: (backend, the path asked for, text the tool's own answer contains)
    "echo": ("process", "/bench", '"path": "/bench"'),
    "busybox": ("docker", "/index.html", "Hello from busybox"),
}
PEERS = ("jupyterhub", "alone")  # JupyterHub's LocalProcessSpawner, and the echo tool started directly


def percentile(values, fraction):
    """Nearest rank: the smallest value that at least this fraction of the values do not exceed."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _seconds_between(start, end):
    def aware(value):
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return (aware(end) - aware(start)).total_seconds()


class SpawnBench:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep, prefix="berth-bench-spawn-")
        self.samples = {slug: [] for slug in TOOLS}
        self.peer_samples = {peer: [] for peer in PEERS if peer != "jupyterhub" or args.jupyterhub}
        self.hub = None

    # setup
    def start_docker(self):
        from tests import images
        from tests.services import Dockerd

        engine = Dockerd()
        self.run_state.cleanup.callback(engine.stop)  # closed last: after Berth and its containers
        client = engine.client()
        try:
            images.build_busybox(client)
        finally:
            client.close()
        return engine.url

    def write_catalogue(self):
        """The tests' own entries for the two tools, unchanged."""
        tests = yaml.safe_load((ROOT / "tests" / "catalogue.yml").read_text())
        tools = [entry for entry in tests["tools"] if entry["slug"] in TOOLS]
        path = self.run_state.work / "catalogue.yml"
        path.write_text(json.dumps({"tools": tools}, indent=2))  # JSON is YAML
        return path

    def start(self):
        docker_url = self.start_docker()
        self.berth = Berth(self.run_state, self.write_catalogue(), postgres=self.args.postgres, extra_env={
            "BERTH_BACKENDS": "process,docker",
            "BERTH_DOCKER_URL": docker_url,
            "BERTH_DOCKER_PULL": "never",  # the image is built locally; nothing is fetched
        })
        self.berth.start()
        self.browser = self.berth.sign_in()
        self.run_state.cleanup.callback(self.browser.close)
        self.hosts = {slug: self.berth.tool_address(slug) for slug in TOOLS}
        if self.args.jupyterhub:
            # The same command as tests/catalogue.yml's echo, with the Python the worker fills in
            # for {python}; the spawner adds --port.
            self.hub = JupyterHub(self.run_state, [sys.executable, "-m", "berth_tools.echo"]).start()

    # measuring
    def launch_once(self, slug):
        """Time one launch of a stopped tool; stop it again. Returns the sample."""
        backend, path, expected = TOOLS[slug]
        url = f"http://{self.hosts[slug]}{path}"
        deadline = time.monotonic() + 120
        started = time.perf_counter()
        first = self.browser.get(url, headers={"Sec-Fetch-Mode": "navigate"}, timeout=30)
        if first.status_code != 202:
            raise RuntimeError(f"{slug}: the first visit answered {first.status_code}, not the starting page")
        polls = 0
        while True:
            answer = self.browser.get(url, headers={"Sec-Fetch-Mode": "cors", "Accept": "application/json"},
                                      timeout=30)
            polls += 1
            if answer.status_code == 200:
                elapsed = time.perf_counter() - started
                break
            state = answer.json().get("state") if answer.status_code == 503 else None
            # RUNNING here: the auth check ran just before the worker recorded it; ask again.
            if state not in ("QUEUED", "SPAWNING", "RUNNING") or time.monotonic() > deadline:
                raise RuntimeError(f"{slug}: the tool did not start: {answer.status_code} {answer.text[:300]}")
            time.sleep(self.args.poll_ms / 1000)
        if expected not in answer.text:
            raise RuntimeError(f"{slug}: a 200 that is not the tool's own answer: {answer.text[:300]}")
        [row] = self.berth.query(
            "SELECT id, backend, created_at, started_at, running_at FROM tool_instances "
            "WHERE host = :host AND state = 'RUNNING'", host=self.hosts[slug].split(":")[0])
        if row["backend"] != backend:
            raise RuntimeError(f"{slug} ran on the {row['backend']} backend, not {backend}")
        self.berth.stop_instance(row["id"], actor="bench")
        # nginx answers with the auth answer it cached for the running tool until the second of
        # its clock ends (docs/decisions/0021-one-second-auth-cache.md): the next launch's first
        # visit, if it came within that second, would meet the tool stopping, not the starting
        # page. Untimed: the next launch's clock starts at its first visit.
        time.sleep(1.02 - time.time() % 1)
        return {
            "instance": row["id"],
            "seconds": elapsed,
            "queue_seconds": _seconds_between(row["created_at"], row["started_at"]),
            "worker_seconds": _seconds_between(row["started_at"], row["running_at"]),
            "polls": polls,
        }

    def poll_until_200(self, session, url, expected, started, what):
        """Ask url every --poll-ms until it answers 200 with the tool's own body; seconds since started."""
        import requests

        deadline = time.monotonic() + 120
        while True:
            try:
                answer = session.get(url, allow_redirects=False, timeout=30)
            except requests.ConnectionError:
                answer = None  # the tool alone: not listening yet
            if answer is not None and answer.status_code == 200:
                elapsed = time.perf_counter() - started
                if expected not in answer.text:
                    raise RuntimeError(f"{what}: a 200 that is not the tool's own answer: {answer.text[:300]}")
                return elapsed
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: no answer from the tool within 120 s")
            time.sleep(self.args.poll_ms / 1000)

    def launch_jupyterhub(self):
        """Start request to JupyterHub's API, in a thread (the API answers only once the server is
        up); meanwhile, poll the tool's address through chp, as Berth's launch is polled."""
        import requests

        result = {}

        def request_start():
            try:
                result["status"] = self.hub.request_start()
            except Exception as error:  # reported below, from the main thread
                result["error"] = error

        with requests.Session() as session:
            started = time.perf_counter()
            thread = threading.Thread(target=request_start, daemon=True)
            thread.start()
            try:
                elapsed = self.poll_until_200(session, self.hub.tool_url("/bench"),
                                              f'"path": "/user/{self.hub.user}/bench"', started, "jupyterhub")
            except RuntimeError:
                thread.join(5)
                if "error" in result:
                    raise RuntimeError(f"jupyterhub: {result['error']}") from None
                raise
            thread.join(120)
        if "error" in result:
            raise RuntimeError(f"jupyterhub: {result['error']}")
        self.hub.stop_server()
        return {"seconds": elapsed, "api_status": result.get("status")}

    def launch_alone(self):
        """The tool's own start-up: the process started directly, polled until its first 200."""
        import requests

        port = free_port()
        env = {**os.environ, "BERTH_DEPLOYMENT": self.run_state.deployment}  # for the final sweep
        with requests.Session() as session:
            started = time.perf_counter()
            process = start_process([sys.executable, "-m", "berth_tools.echo", "--port", str(port)], os.devnull,
                                    env=env)
            try:
                elapsed = self.poll_until_200(session, f"http://127.0.0.1:{port}/bench", '"path": "/bench"',
                                              started, "the tool alone")
            finally:
                stop_process(process)
        return {"seconds": elapsed}

    def measure(self):
        total = self.args.warmup + self.args.launches
        for number in range(total):
            counted = number >= self.args.warmup
            label = f"{number - self.args.warmup + 1}/{self.args.launches}" if counted else "warm-up"
            # Rotate the order each round, so that drift on the machine falls on every system.
            turns = [("berth", slug) for slug in TOOLS] + [(peer, "echo") for peer in self.peer_samples]
            for system, slug in rotated(turns, number):
                if system == "berth":
                    sample = self.launch_once(slug)
                    target = self.samples[slug]
                else:
                    sample = self.launch_jupyterhub() if system == "jupyterhub" else self.launch_alone()
                    target = self.peer_samples[system]
                if counted:
                    target.append(sample)
                print(f"  {label:<8} {system:<10} {slug:<8} {sample['seconds'] * 1000:>8.0f} ms", flush=True)

    # reporting
    def summarise(self):
        summary = {}
        for slug, samples in self.samples.items():
            row = {"backend": TOOLS[slug][0], "launches": len(samples)}
            for key, name in (("seconds", "ms"), ("queue_seconds", "queue_ms"), ("worker_seconds", "worker_ms")):
                values = [sample[key] * 1000 for sample in samples]
                row[f"median_{name}"] = statistics.median(values)
                row[f"p90_{name}"] = percentile(values, 0.9)
            row["min_ms"] = min(sample["seconds"] for sample in samples) * 1000
            row["max_ms"] = max(sample["seconds"] for sample in samples) * 1000
            summary[slug] = row
        return summary

    def compare(self):
        """Berth's echo against JupyterHub's, and both less the tool's own start-up (overhead)."""
        rows = {"berth": [sample["seconds"] * 1000 for sample in self.samples["echo"]]}
        rows.update({peer: [sample["seconds"] * 1000 for sample in samples]
                     for peer, samples in self.peer_samples.items()})
        stats = {name: {"launches": len(values), "median_ms": statistics.median(values),
                        "p90_ms": percentile(values, 0.9), "min_ms": min(values), "max_ms": max(values)}
                 for name, values in rows.items()}
        alone = stats["alone"]
        for name in ("berth", "jupyterhub"):
            if name in stats:
                stats[name]["overhead_median_ms"] = stats[name]["median_ms"] - alone["median_ms"]
                stats[name]["overhead_p90_ms"] = stats[name]["p90_ms"] - alone["p90_ms"]
                # Each launch less the tool alone's of the same round: drift on a shared machine
                # falls on both halves of a pair.
                stats[name]["paired_overhead_median_ms"] = statistics.median(
                    system - own for system, own in zip(rows[name], rows["alone"]))
        if "jupyterhub" in stats:
            berth, hub = stats["berth"], stats["jupyterhub"]
            stats["ratios"] = {key: berth[key] / hub[key] if hub[key] > 0 else None
                               for key in ("median_ms", "p90_ms", "overhead_median_ms", "overhead_p90_ms")}
        return stats

    def report_comparison(self, stats):
        names = {"berth": "Berth (process backend)", "jupyterhub": f"JupyterHub {self.hub_version}",
                 "alone": "the tool alone"}
        print("\necho (python -m berth_tools.echo), first request → first proxied 200:\n")
        print(f"{'system':<30}{'n':>3}{'median ms':>11}{'p90 ms':>9}{'min':>7}{'max':>7}"
              f"{'overhead med':>14}{'overhead p90':>14}")
        for name in ("berth", "jupyterhub", "alone"):
            if name not in stats:
                continue
            row = stats[name]
            overhead = (f"{row['overhead_median_ms']:>14.0f}{row['overhead_p90_ms']:>14.0f}"
                        if "overhead_median_ms" in row else f"{'–':>14}{'–':>14}")
            print(f"{names[name]:<30}{row['launches']:>3}{row['median_ms']:>11.0f}{row['p90_ms']:>9.0f}"
                  f"{row['min_ms']:>7.0f}{row['max_ms']:>7.0f}{overhead}")
        if "ratios" in stats:
            ratios = stats["ratios"]
            shown = {key: "–" if value is None else f"{value:.2f}" for key, value in ratios.items()}
            print(f"{'Berth / JupyterHub':<30}{'':>3}{shown['median_ms']:>11}{shown['p90_ms']:>9}{'':>14}"
                  f"{shown['overhead_median_ms']:>14}{shown['overhead_p90_ms']:>14}")
        print("overhead: the system's time less the tool's own start-up (medians, and p90s, subtracted).")
        paired = [f"{names[name]} {stats[name]['paired_overhead_median_ms']:.0f} ms"
                  for name in ("berth", "jupyterhub") if name in stats]
        print(f"paired overhead (median of each round's launch less the tool alone's in that round): "
              f"{', '.join(paired)}.")

    def check_goals(self, stats):
        """Berth's launch targets: overhead ≤ 50 ms at the median, and ≥ 3× better than JupyterHub's."""
        berth = stats["berth"]["overhead_median_ms"]
        goals = [check_target("Berth's launch overhead, median (ms)", berth, 50.0, higher_is_better=False,
                              note="first visit → first proxied answer, less the tool's own start")]
        if "jupyterhub" in stats:
            hub = stats["jupyterhub"]["overhead_median_ms"]
            goals.append(check_target("JupyterHub's overhead ÷ Berth's (medians)", hub / max(berth, 1.0), 3.0,
                                      unit="×", note=f"JupyterHub {hub:.0f} ms, Berth {berth:.0f} ms; "
                                      "Berth's floored at 1 ms"))
        return goals

    def report(self, summary):
        args = self.args
        database = "PostgreSQL + Redis" if args.postgres else "SQLite + Huey on SQLite"
        print(f"\n{args.launches} launches per tool (after {args.warmup} warm-up), stopped between "
              f"launches; polled every {args.poll_ms} ms; Berth on {database}; "
              f"{os.cpu_count()} CPUs, load average {self.load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after\n")
        print(f"{'tool':<9}{'backend':<9}{'n':>3}{'median ms':>11}{'p90 ms':>9}{'min':>7}{'max':>7}"
              f"{'queue med':>11}{'worker med':>12}{'worker p90':>12}")
        for slug, row in summary.items():
            print(f"{slug:<9}{row['backend']:<9}{row['launches']:>3}{row['median_ms']:>11.0f}"
                  f"{row['p90_ms']:>9.0f}{row['min_ms']:>7.0f}{row['max_ms']:>7.0f}"
                  f"{row['median_queue_ms']:>11.0f}{row['median_worker_ms']:>12.0f}{row['p90_worker_ms']:>12.0f}")
        print("\nmedian/p90: first navigation GET → first proxied 200 from the tool (through nginx).\n"
              "queue: instance created → a worker took it; worker: taken → RUNNING recorded.")
        comparison = self.compare()
        self.report_comparison(comparison)
        goals = self.check_goals(comparison)
        print_targets(goals)
        write_results(self.args.json or RESULTS, "bench.spawn", {
            "launches": args.launches, "warmup": args.warmup, "poll_ms": args.poll_ms,
            "database": "postgres" if args.postgres else "sqlite",
            "cpus": os.cpu_count(),
            "load_average_before": self.load_before, "load_average_after": os.getloadavg()[0],
            "summary": summary,
            "samples": self.samples,
            "comparison": comparison, "jupyterhub_version": self.hub_version, "targets": goals,
            "peer_samples": self.peer_samples,
        })

    def execute(self):
        self.start()
        self.hub_version = jupyterhub_version() if self.hub else None
        self.load_before = os.getloadavg()[0]
        self.measure()
        self.report(self.summarise())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=10, help="timed launches per tool (10)")
    parser.add_argument("--warmup", type=int, default=1, help="launches per tool not counted (1)")
    parser.add_argument("--poll-ms", type=int, default=25, help="ms between requests while it starts (25)")
    add_run_arguments(parser)
    parser.add_argument("--no-jupyterhub", dest="jupyterhub", action="store_false",
                        help="measure Berth and the tool alone only, without the JupyterHub peer")
    args = parser.parse_args(argv)
    if args.launches < 1 or args.warmup < 0 or args.poll_ms < 1:
        parser.error("--launches and --poll-ms must be at least 1, --warmup at least 0")
    require("nginx", "dockerd", "busybox", hint="`make test` installs what this needs")
    run_benchmark(SpawnBench(args))


if __name__ == "__main__":
    main()
