"""Signed-in users during a slow-client attack on the door, against a quiet run, in one process.

    python -m bench.slow_clients [--connections 400] [--sources 100] [--duration 15] [--rounds 2]
                                 [--users 4] [--postgres] [--keep] [--json FILE]

One Berth (tests/local_stack.py, as `berth run` starts it) with the echo tool. A few signed-in
users each open their running echo tool and the catalogue in a loop, as fast as they are
answered, while another signs in once a second (a new session each time). That is measured
twice per round: quiet, then under attack, and the rounds alternate so that drift on the
machine falls on both.

The attack (tests/slow_clients.py): --connections slow requests at once to the endpoints that
need no sign-in (the sign-in form's POST body and its headers, sign-out, the single sign-on
callback, /healthz, a tool host's hand-off), each trickling one byte a second, from --sources
loopback addresses (as from that many machines, so that the per-address limits let most of them
in), each reopened as soon as nginx ends it.

Reported per kind of request: median, p99 and errors (an error: no 200 within 8 s, the time
after which the platform counted as down), quiet and under attack, and the ratios of the two.
A "targets" section checks them. With --json FILE the results are written there as JSON.

Everything listens on 127.0.0.1; every process the run starts is stopped on success, failure,
Ctrl-C or SIGTERM.
"""
import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import requests
import yaml

from bench._stack import (
    ROOT,
    BenchRun,
    Berth,
    add_run_arguments,
    check_target,
    print_targets,
    require,
    run_benchmark,
    write_results,
)
from tests.actions import signed_in
from tests.local_stack import DOMAIN
from tests.slow_clients import SlowClients, loopback_sources, slow_targets

DOWN = 8.0  # seconds: an answer slower than this counts as an error, as the platform down
KINDS = ("tool", "catalogue", "sign-in")


def echo_catalogue(work):
    """The tests' echo tool alone, as a catalogue in the work directory."""
    tools = yaml.safe_load((ROOT / "tests" / "catalogue.yml").read_text())["tools"]
    catalogue = work / "catalogue.yml"
    catalogue.write_text(yaml.safe_dump({"tools": [tool for tool in tools if tool["slug"] == "echo"]}))
    return catalogue


class Users:
    """Signed-in users at work until stop(): each opens its tool and the catalogue in turn, and
    one more signs in once a second. Latencies in seconds (None: an error), by kind."""

    def __init__(self, berth, users, newcomer):
        self.berth, self.users, self.newcomer = berth, users, newcomer
        self.samples = {kind: [] for kind in KINDS}
        self._stopping = threading.Event()
        self._threads = []

    def _timed(self, kind, call):
        started = time.perf_counter()
        try:
            ok = call()
        except (requests.RequestException, RuntimeError):  # RuntimeError: a sign-in refused
            ok = False
        self.samples[kind].append(time.perf_counter() - started if ok else None)

    def _browse(self, user, browser):
        tool = self.berth.tool_url("echo", user, "/headers")
        while not self._stopping.is_set():
            self._timed("tool", lambda: browser.get(tool, timeout=DOWN).status_code == 200)
            self._timed("catalogue", lambda: browser.get(self.berth.base_url + "/", timeout=DOWN).status_code == 200)

    def _sign_in(self):
        def once():
            signed_in(self.berth.base_url, self.newcomer["email"], self.newcomer["password"]).close()
            return True

        while not self._stopping.wait(1.0):
            self._timed("sign-in", once)

    def start(self):
        for user, browser in self.users:
            self._threads.append(threading.Thread(target=self._browse, args=(user, browser), daemon=True))
        self._threads.append(threading.Thread(target=self._sign_in, daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self):
        self._stopping.set()
        for thread in self._threads:
            thread.join(DOWN + 2)


def summarise(samples):
    answered = sorted(value for value in samples if value is not None)
    if not answered:
        return {"requests": len(samples), "errors": len(samples), "median_ms": None, "p99_ms": None}
    p99 = answered[min(len(answered) - 1, int(len(answered) * 0.99))]
    return {"requests": len(samples), "errors": len(samples) - len(answered),
            "median_ms": statistics.median(answered) * 1000, "p99_ms": p99 * 1000}


class Bench:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep, prefix="berth-bench-slow-")

    def start(self):
        self.run_state.work.chmod(0o711)  # the tool runs as a user of its own, and passes through to its home
        self.berth = Berth(self.run_state, echo_catalogue(self.run_state.work), postgres=self.args.postgres)
        self.berth.start()
        self.users = []
        for _ in range(self.args.users):
            user = self.berth.create_user()
            browser = self.berth.login(user)
            self.berth.open_tool(browser, "echo", user, timeout=30)
            self.users.append((user, browser))
        self.newcomer = self.berth.create_user()  # signs in again and again, with no tool of its own

    def phase(self, attacked):
        """One measurement: the users at work for --duration seconds, under attack or not."""
        attack = None
        if attacked:
            first_user = self.users[0][0]
            attack = SlowClients(self.berth.port, slow_targets(DOMAIN, self.berth.tool_host("echo", first_user)),
                                 loopback_sources(self.args.sources), self.args.connections).start()
            time.sleep(2)  # every slow request is under way before the users are timed
        users = Users(self.berth, self.users, self.newcomer)
        users.start()
        time.sleep(self.args.duration)
        users.stop()
        held = len(attack.open) if attack else 0
        if attack:
            attack.stop()
        return users.samples, (dict(attack.counts, held_at_end=held) if attack else None)

    def execute(self):
        self.start()
        samples = {phase: {kind: [] for kind in KINDS} for phase in ("quiet", "attack")}
        attacks = []
        for round_number in range(self.args.rounds):
            for phase in ("quiet", "attack") if round_number % 2 == 0 else ("attack", "quiet"):
                measured, counts = self.phase(phase == "attack")
                for kind in KINDS:
                    samples[phase][kind] += measured[kind]
                if counts:
                    attacks.append(counts)
                print(f"round {round_number + 1}, {phase}: "
                      + ", ".join(f"{kind} {len(measured[kind])}" for kind in KINDS)
                      + (f"; attack {counts}" if counts else ""), flush=True)
        self.report(samples, attacks)

    def report(self, samples, attacks):
        args = self.args
        summary = {phase: {kind: summarise(samples[phase][kind]) for kind in KINDS} for phase in samples}
        ratios = {}
        print(f"\n{args.connections} slow connections from {args.sources} addresses; {args.users} users; "
              f"{args.duration} s per phase, {args.rounds} round(s); Berth on "
              f"{'PostgreSQL + Redis' if args.postgres else 'SQLite + Huey on SQLite'}; {os.cpu_count()} CPUs\n")
        print(f"{'request':<11}{'quiet p50':>10}{'p99':>9}{'err':>5}{'attack p50':>12}{'p99':>9}{'err':>5}"
              f"{'× p50':>8}{'× p99':>8}")
        for kind in KINDS:
            quiet, attacked = summary["quiet"][kind], summary["attack"][kind]
            ratio = {measure: (attacked[measure] / quiet[measure]
                               if attacked[measure] is not None and quiet[measure] else float("inf"))
                     for measure in ("median_ms", "p99_ms")}
            ratios[kind] = ratio

            def ms(value):
                return f"{value:.1f}" if value is not None else "-"
            print(f"{kind:<11}{ms(quiet['median_ms']):>10}{ms(quiet['p99_ms']):>9}{quiet['errors']:>5}"
                  f"{ms(attacked['median_ms']):>12}{ms(attacked['p99_ms']):>9}{attacked['errors']:>5}"
                  f"{ratio['median_ms']:>8.2f}{ratio['p99_ms']:>8.2f}")
        goals = []
        for kind in ("tool", "catalogue"):
            goals.append(check_target(f"{kind}: median under attack ÷ quiet", ratios[kind]["median_ms"], 2.0,
                                      higher_is_better=False, unit="×"))
            goals.append(check_target(f"{kind}: p99 under attack ÷ quiet", ratios[kind]["p99_ms"], 3.0,
                                      higher_is_better=False, unit="×"))
        goals.append(check_target("sign-in: median under attack ÷ quiet", ratios["sign-in"]["median_ms"], 2.0,
                                  higher_is_better=False, unit="×"))
        errors = sum(summary["attack"][kind]["errors"] for kind in KINDS)
        goals.append(check_target("errors under attack (no 200 within 8 s)", errors, 0, higher_is_better=False))
        print_targets(goals)
        if args.json:
            write_results(Path(args.json).resolve(), "bench.slow_clients", {
                "connections": args.connections, "sources": args.sources, "users": args.users,
                "duration_s": args.duration, "rounds": args.rounds,
                "database": "postgres" if args.postgres else "sqlite", "cpus": os.cpu_count(),
                "summary": summary, "ratios": ratios, "attacks": attacks, "targets": goals,
            })


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400, help="slow connections at once (400)")
    parser.add_argument("--sources", type=int, default=100, help="loopback addresses they come from (100)")
    parser.add_argument("--users", type=int, default=4, help="signed-in users at work (4)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase (15)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of a quiet and an attacked phase (2)")
    parser.add_argument("--json", help="write the results to this file as JSON")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.connections, args.sources, args.users, args.duration, args.rounds) < 1:
        parser.error("--connections, --sources, --users, --duration and --rounds must be at least 1")
    require("nginx")
    run_benchmark(Bench(args))


if __name__ == "__main__":
    main()
