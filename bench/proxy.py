"""Proxied throughput and latency: Berth's auth_request path against plain nginx, in one run.

    python -m bench.proxy [--duration 10] [--rounds 2] [--postgres] [--keep]

Three paths to the same upstream, an nginx serving one static 1 KB file that Berth launched
as a tool through the normal flow (sign in, first visit, starting page, RUNNING):

  direct       wrk → the tool's port
  plain nginx  wrk → a separate nginx: proxy_pass to an upstream block with keepalive
  berth        wrk → Berth's nginx, with the session cookie and the tool's Host:
               auth_request to the auth service, then proxy_pass to the tool

Each measurement is `wrk -t2 -c32 -d<duration>s --latency`. The paths take turns within
every round, in a rotated order, so that drift on the machine falls on all of them. Ratios
are to plain nginx measured in the same run. The RSS of each of Berth's process groups is
sampled throughout; the peak is reported. Results go to bench/results/latest.json.

Everything listens on 127.0.0.1. Every process the run starts (Berth's nginx, auth, web and
worker, the tool, the plain nginx, wrk, and PostgreSQL and Redis with --postgres) is
stopped on success, failure, Ctrl-C or SIGTERM.
"""
import argparse
import http.client
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench._stack import (
    ROOT,
    BenchRun,
    Berth,
    free_port,
    install_signal_handlers,
    nginx_binary,
    stat_fields,
    stop_process,
    wait_for,
)

RESULTS = ROOT / "bench" / "results" / "latest.json"
SLUG = "static"
BODY = (b"Berth benchmark body. " * 64)[:1023] + b"\n"  # exactly 1 KB
PATH = "/1k.html"
PATHS = ("direct", "plain nginx", "berth", "berth cached")
CACHE_SECONDS = 5  # the auth cache lifetime for the "berth cached" path

# wrk prints its own report; this adds one machine-readable line (latencies in microseconds).
WRK_SCRIPT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BERTH_BENCH {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, \"non_2xx_3xx\": %d, " ..
    "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, \"timeouts\": %d, " ..
    "\"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes, e.status, e.connect, e.read, e.write,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""

# The upstream: nginx serving one file. Berth starts it as a tool, so its port and home arrive
# at launch: the tool's command fills @PORT@ and @HOME@ in with sed, then execs nginx.
UPSTREAM_CONF = """\
{user}worker_processes 1;
pid {home}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    default_type text/html;
    client_body_temp_path {home}/tmp_client_body;
    proxy_temp_path {home}/tmp_proxy;
    fastcgi_temp_path {home}/tmp_fastcgi;
    uwsgi_temp_path {home}/tmp_uwsgi;
    scgi_temp_path {home}/tmp_scgi;
    server {{
        listen 127.0.0.1:@PORT@;
        root {www};
    }}
}}
"""

# Plain nginx: Berth's proxy settings (nginx/snippets/common.conf.j2) without auth_request,
# and with keepalive to the upstream, which Berth's raw ip:port proxy_pass cannot have.
PLAIN_CONF = """\
{user}worker_processes auto;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    client_body_temp_path {prefix}/tmp_client_body;
    proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fastcgi;
    uwsgi_temp_path {prefix}/tmp_uwsgi;
    scgi_temp_path {prefix}/tmp_scgi;
    upstream tool {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            client_max_body_size 0;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
"""


# -- memory -------------------------------------------------------------------------------------
def _rss_kib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0  # a zombie has no RSS


def group_rss(root):
    """(KiB, process count) of root and its descendants in root's session.

    Staying in the session keeps the tool out of the worker's group: the process backend starts
    each tool in a session of its own, as a child of the worker.
    """
    try:
        session = stat_fields(root)[3]
    except OSError:
        return 0, 0
    total = count = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        try:
            if stat_fields(pid)[3] != session:
                continue
            total += _rss_kib(pid)
            count += 1
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return total, count


class MemorySampler(threading.Thread):
    def __init__(self, roots, interval=0.1):
        super().__init__(daemon=True)
        self.roots = roots
        self.interval = interval
        self.before = {name: group_rss(pid) for name, pid in roots.items()}
        self.peak = {name: kib for name, (kib, _) in self.before.items()}
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.wait(self.interval):
            for name, pid in self.roots.items():
                self.peak[name] = max(self.peak[name], group_rss(pid)[0])

    def stop(self):
        self._stop_event.set()
        self.join()


def start_nginx(conf, prefix, log):
    command = [nginx_binary(), "-p", f"{prefix}/", "-c", str(conf), "-e", f"{prefix}/error.log",
               "-g", "daemon off;"]
    checked = subprocess.run(command[:-2] + ["-t", "-q"], capture_output=True, text=True)
    if checked.returncode:
        raise RuntimeError(f"nginx rejected {conf}:\n{checked.stderr}")
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


# -- HTTP ---------------------------------------------------------------------------------------
def fetch(port, host=None, cookie=None, path=PATH):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {}
    if host:
        headers["Host"] = host
    if cookie:
        headers["Cookie"] = cookie
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


# -- the run ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep)
        self.work = self.run_state.work
        self.cleanup = self.run_state.cleanup
        self.berth = Berth(self.run_state, postgres=args.postgres)
        self.wrk = None
        self.results = {}

    # setup
    def write_upstream_files(self):
        www = self.work / "www"
        www.mkdir()
        (www / PATH.lstrip("/")).write_bytes(BODY)
        user = "user root root;\n" if os.geteuid() == 0 else ""
        template = self.work / "upstream.conf.in"
        template.write_text(UPSTREAM_CONF.format(user=user, home="@HOME@", www=www))
        # A tool command is a list; {port} and {home} are filled in by the process backend.
        script = (f"sed -e 's|@PORT@|{{port}}|' -e 's|@HOME@|{{home}}|g' {shlex.quote(str(template))} "
                  f"> {{home}}/nginx.conf && "
                  f"exec {shlex.quote(nginx_binary())} -p {{home}}/ -c {{home}}/nginx.conf "
                  f"-e {{home}}/error.log -g 'daemon off;'")
        catalogue = self.work / "catalogue.yml"
        catalogue.write_text(json.dumps({"tools": [{
            "slug": SLUG, "name": "Static 1 KB",
            "description": "nginx serving one static 1 KB file: the benchmark's upstream.",
            "command": ["/bin/sh", "-c", script],
            "health_path": PATH, "spawn_timeout": 30, "idle_timeout": 3600,
        }]}, indent=2))  # JSON is YAML
        return catalogue

    def start_berth(self):
        # The auth service marks answers cacheable; only the second nginx (below) caches them.
        self.berth.start(self.write_upstream_files(),
                         extra_env={"BERTH_AUTH_CACHE_SECONDS": str(CACHE_SECONDS)})
        self.stack, self.config, self.port = self.berth.stack, self.berth.config, self.berth.port
        with self.berth.sign_in() as browser:
            self.tool_host = self.berth.open_tool(browser, SLUG, PATH)
            self.cookie = self.berth.session_cookie(browser)
        [row] = self.berth.query(
            "SELECT upstream, backend_state FROM tool_instances WHERE host = :host AND state = 'RUNNING'",
            host=self.tool_host.split(":")[0])
        self.upstream = row["upstream"]
        state = row["backend_state"]
        state = state if isinstance(state, dict) else json.loads(state)
        self.tool_pid = state["pid"]  # the tool's nginx master (sh execs it)

    def start_plain_nginx(self):
        prefix = self.work / "plain"
        prefix.mkdir()
        self.plain_port = free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(PLAIN_CONF.format(user="user root root;\n" if os.geteuid() == 0 else "",
                                          prefix=prefix, upstream=self.upstream, port=self.plain_port))
        self.plain = start_nginx(conf, prefix, prefix / "stdout.log")
        self.cleanup.callback(stop_process, self.plain)
        wait_for(self.plain_port, "plain nginx", self.plain)

    def start_berth_nginx(self, cache_seconds):
        """Another nginx with Berth's own rendered configuration, in front of the same auth and web."""
        from webapp.nginx_conf import prepare_prefix, render_nginx

        prefix = self.work / f"berth-nginx-cache-{cache_seconds}"
        prepare_prefix(prefix)
        port = free_port()
        config = {**self.config, "BERTH_AUTH_CACHE_SECONDS": cache_seconds}
        text = render_nginx(config, standalone=True, prefix=str(prefix), listen=f"127.0.0.1:{port}")
        conf = prefix / "nginx.conf"
        conf.write_text(("user root root;\n" if os.geteuid() == 0 else "") + text)
        process = start_nginx(conf, prefix, prefix / "stdout.log")
        self.cleanup.callback(stop_process, process)
        wait_for(port, "Berth's nginx", process)
        return port, process

    # measuring
    def targets(self):
        tool_port = int(self.upstream.rsplit(":", 1)[1])
        return {
            "direct": {"port": tool_port},
            "plain nginx": {"port": self.plain_port},
            "berth": {"port": self.uncached_port, "host": self.tool_host, "cookie": self.cookie},
            "berth cached": {"port": self.port, "host": self.tool_host, "cookie": self.cookie},
        }

    def check_targets(self, targets):
        for name, target in targets.items():
            status, body = fetch(**target)
            if status != 200 or body != BODY:
                raise RuntimeError(f"{name}: expected 200 and the 1 KB body, got {status}, {body[:200]!r}")

    def run_wrk(self, target, duration):
        script = self.work / "report.lua"
        if not script.exists():
            script.write_text(WRK_SCRIPT)
        command = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{duration}s",
                   "--latency", "-s", str(script)]
        if target.get("host"):
            command += ["-H", f"Host: {target['host']}"]
        if target.get("cookie"):
            command += ["-H", f"Cookie: {target['cookie']}"]
        command.append(f"http://127.0.0.1:{target['port']}{PATH}")
        self.wrk = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, text=True)
        output, _ = self.wrk.communicate(timeout=duration + 60)
        code, self.wrk = self.wrk.returncode, None
        line = next((l for l in output.splitlines() if l.startswith("BERTH_BENCH ")), None)
        if code or line is None:
            raise RuntimeError(f"wrk failed ({code}):\n{output}")
        result = json.loads(line.split(" ", 1)[1])
        result["requests_per_s"] = result["requests"] / (result["duration_us"] / 1e6)
        if result["non_2xx_3xx"]:
            raise RuntimeError(f"wrk saw {result['non_2xx_3xx']} answers that were not 2xx/3xx "
                               f"out of {result['requests']}; the numbers would be meaningless")
        return result

    def measure(self):
        targets = self.targets()
        self.check_targets(targets)
        self.load_before = os.getloadavg()[0]
        roots = {name: process.pid for name, process in self.stack.processes.items()}
        roots["tool (upstream nginx)"] = self.tool_pid
        roots["plain nginx"] = self.plain.pid
        roots["nginx (uncached)"] = self.uncached.pid
        sampler = MemorySampler(roots)
        sampler.start()
        try:
            for name in PATHS:  # warm-up, not counted: connections, gunicorn threads, caches
                self.run_wrk(targets[name], 1)
            rounds = []
            for index in range(self.args.rounds):
                order = PATHS[index % len(PATHS):] + PATHS[:index % len(PATHS)]
                measured = {}
                for name in order:
                    measured[name] = self.run_wrk(targets[name], self.args.duration)
                    print(f"  round {index + 1}/{self.args.rounds}  {name:<12} "
                          f"{measured[name]['requests_per_s']:>9.0f} req/s", flush=True)
                rounds.append({"order": list(order), "paths": measured})
        finally:
            sampler.stop()
        self.check_targets(targets)  # still the same answer after the load
        self.load_after = os.getloadavg()[0]
        return rounds, sampler

    # reporting
    def summarise(self, rounds, sampler):
        summary = {}
        for name in PATHS:
            runs = [r["paths"][name] for r in rounds]
            summary[name] = {
                "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
                "p50_ms": statistics.median(r["p50_us"] for r in runs) / 1000,
                "p99_ms": statistics.median(r["p99_us"] for r in runs) / 1000,
                "socket_errors": sum(r["connect_errors"] + r["read_errors"] + r["write_errors"]
                                     + r["timeouts"] for r in runs),
            }
        plain = summary["plain nginx"]["requests_per_s"]
        for name in PATHS:
            summary[name]["ratio_to_plain_nginx"] = summary[name]["requests_per_s"] / plain
            summary[name]["ratio_per_round"] = [
                r["paths"][name]["requests_per_s"] / r["paths"]["plain nginx"]["requests_per_s"]
                for r in rounds]
        memory = {name: {"processes": sampler.before[name][1],
                         "before_mib": sampler.before[name][0] / 1024,
                         "peak_mib": sampler.peak[name] / 1024} for name in sampler.roots}
        return summary, memory

    def report(self, summary, memory, rounds):
        args = self.args
        database = "PostgreSQL + Redis" if args.postgres else "SQLite + Huey on SQLite"
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
              f"{args.rounds} round(s), median of rounds; 1 KB static file from nginx (1 worker); "
              f"Berth on {database}; {os.cpu_count()} CPUs, all on this machine; "
              f"load average {self.load_before:.1f} before, {self.load_after:.1f} after\n")
        print(f"{'path':<14}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'× plain nginx':>15}"
              f"{'per round':>18}{'sock err':>10}")
        for name in PATHS:
            row = summary[name]
            per_round = ", ".join(f"{ratio:.2f}" for ratio in row["ratio_per_round"])
            print(f"{name:<14}{row['requests_per_s']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                  f"{row['ratio_to_plain_nginx']:>15.2f}{per_round:>18}{row['socket_errors']:>10}")
        print(f"\n{'process group':<24}{'processes':>10}{'RSS before MiB':>16}{'peak MiB':>10}")
        for name, row in memory.items():
            print(f"{name:<24}{row['processes']:>10}{row['before_mib']:>16.1f}{row['peak_mib']:>10.1f}")
        document = {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([Path(sys.executable).name, "-m", "bench.proxy"] + sys.argv[1:]),
            "wrk": {"threads": args.threads, "connections": args.connections,
                    "duration_s": args.duration, "rounds": args.rounds},
            "database": "postgres" if args.postgres else "sqlite",
            "cpus": os.cpu_count(),
            "load_average_1min": {"before": self.load_before, "after": self.load_after},
            "body_bytes": len(BODY),
            "summary": summary,
            "rss": memory,
            "rounds": rounds,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(document, indent=2) + "\n")
        print(f"\nWritten to {RESULTS.relative_to(ROOT)}")

    # the whole run
    def run(self):
        try:
            self.start_berth()
            self.start_plain_nginx()
            self.uncached_port, self.uncached = self.start_berth_nginx(0)
            rounds, sampler = self.measure()
            summary, memory = self.summarise(rounds, sampler)
            self.report(summary, memory, rounds)
            self.run_state.failed = False
        except (KeyboardInterrupt, SystemExit):
            self.run_state.failed = False  # stopped on purpose: nothing to look into
            raise
        finally:
            self.run_state.children.append(self.wrk)
            self.run_state.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement (10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every path (2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--postgres", action="store_true",
                        help="run Berth on PostgreSQL and Redis instead of SQLite")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and its logs")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk; `make bench` does it)")
    install_signal_handlers()
    try:
        Bench(args).run()
    except KeyboardInterrupt:
        raise SystemExit("Interrupted; every process the benchmark started has been stopped.")
    except RuntimeError as error:
        raise SystemExit(f"Benchmark failed: {error}")


if __name__ == "__main__":
    main()
