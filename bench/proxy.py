"""Proxied throughput and latency: Berth's auth_request path against plain nginx, in one run.

    python -m bench.proxy [--duration 10] [--rounds 2] [--postgres] [--keep]

Five paths to the same upstream, an nginx serving one static 1 KB file that Berth launched
as a tool through the normal flow (sign in, first visit, starting page, RUNNING):

  direct        wrk → the tool's port
  plain nginx   wrk → a separate nginx: proxy_pass to an upstream block with keepalive
  chp           wrk → JupyterHub's configurable-http-proxy (npm, bench/chp), one static route
                to the tool added through its REST API, as JupyterHub adds routes
  no-op auth    wrk → a Berth nginx with the auth cache off, in front of an auth service that
                answers at once (bench/_noop_auth.py): the auth_request hop alone
  berth uncached  wrk → a Berth nginx with the auth cache off (BERTH_AUTH_CACHE_SECONDS=0), with the
                session cookie and the tool's Host: auth_request to the auth service on every
                request, then the tool
  berth         the same through Berth's own nginx as shipped: the default 1 s auth cache

Each measurement is `wrk -t2 -c32 -d<duration>s --latency`. The paths take turns within
every round, in a rotated order, so that drift on the machine falls on all of them. Ratios
are to plain nginx measured in the same run. The RSS of each of Berth's process groups is
sampled throughout; the peak is reported. A "targets" section checks Berth's performance
targets. Results go to bench/results/latest.json, or to --json FILE.

Everything listens on 127.0.0.1. Every process the run starts (Berth's nginx, auth, web and
worker, the tool, the plain nginx, configurable-http-proxy, wrk, and PostgreSQL and Redis with --postgres) is
stopped on success, failure, Ctrl-C or SIGTERM.
"""
import argparse
import http.client
import json
import os
import shlex
import statistics

from bench._stack import (
    ROOT,
    BenchRun,
    Berth,
    Chp,
    MemorySampler,
    add_run_arguments,
    check_target,
    chp_command,
    chp_version,
    free_port,
    mb,
    print_targets,
    require,
    rotated,
    run_benchmark,
    run_wrk,
    write_results,
)
from deploy.local import nginx_command

RESULTS = ROOT / "bench" / "results" / "latest.json"
SLUG = "static"
BODY = (b"Berth benchmark body. " * 64)[:1023] + b"\n"  # exactly 1 KB
PATH = "/1k.html"
PATHS = ("direct", "plain nginx", "chp", "no-op auth", "berth uncached", "berth")
CONTROL_PLANE = ("auth", "web", "worker")  # Berth's processes other than nginx

# What every nginx of the benchmarks' own has: its pid, error log and temporary files in its
# prefix, no access log, and sendfile. Then the directives of its http block.
NGINX_CONF = """\
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nodelay on;
    client_body_temp_path {prefix}/tmp_client_body;
    proxy_temp_path {prefix}/tmp_proxy;
    fastcgi_temp_path {prefix}/tmp_fastcgi;
    uwsgi_temp_path {prefix}/tmp_uwsgi;
    scgi_temp_path {prefix}/tmp_scgi;
{http}}}
"""

# The upstream: nginx serving files. Berth starts it as a tool, so its port and home arrive
# at launch: the tool's command fills @IP@, @PORT@ and @HOME@ in with sed, then execs nginx.
UPSTREAM_HTTP = """\
    default_type text/html;
    server {{
        listen @IP@:@PORT@;
        root {www};
    }}
"""

# Plain nginx: Berth's proxy settings (nginx/snippets/common.conf.j2) without auth_request,
# and with keepalive to the upstream, which Berth's raw ip:port proxy_pass cannot have.
PLAIN_HTTP = """\
    keepalive_timeout 65s;
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
"""


# -- HTTP ---------------------------------------------------------------------------------------
def fetch(port, host=None, cookie=None, path=PATH, ip="127.0.0.1"):
    connection = http.client.HTTPConnection(ip, port, timeout=10)
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


# -- pieces the transfer benchmark shares --------------------------------------------------------
def static_tool(work, files, slug=SLUG, name="Static 1 KB", health_path=PATH):
    """A catalogue entry whose command runs nginx (1 worker) serving files {name: bytes or size}.

    An int size makes a sparse file of that many bytes (zeros, no disk used). The process
    backend fills {ip}, {port} and {home} into the command; sed puts them into the configuration,
    and `exec` keeps the pid that Berth watches.
    """
    www = work / f"www-{slug}"
    www.mkdir()
    for filename, content in files.items():
        if isinstance(content, int):
            with open(www / filename, "wb") as out:
                out.truncate(content)
        else:
            (www / filename).write_bytes(content)
    template = work / f"upstream-{slug}.conf.in"
    template.write_text(NGINX_CONF.format(workers=1, prefix="@HOME@", http=UPSTREAM_HTTP.format(www=www)))
    nginx = nginx_command("{home}", error_log="{home}/error.log")
    script = (f"sed -e 's|@IP@|{{ip}}|' -e 's|@PORT@|{{port}}|' -e 's|@HOME@|{{home}}|g' {shlex.quote(str(template))} "
              f"> {{home}}/nginx.conf && exec {shlex.join(nginx)}")
    return {"slug": slug, "name": name,
            "description": "nginx serving static files: a benchmark upstream.",
            "command": ["/bin/sh", "-c", script],
            "health_path": health_path, "spawn_timeout": 30, "idle_timeout": 3600}


def write_catalogue(work, tools):
    catalogue = work / "catalogue.yml"
    catalogue.write_text(json.dumps({"tools": tools}, indent=2))  # JSON is YAML
    return catalogue


def running_instance(berth, host):
    """(upstream address, backend pid) of the RUNNING instance behind a tool host."""
    [row] = berth.query(
        "SELECT upstream, backend_state FROM tool_instances WHERE host = :host AND state = 'RUNNING'",
        host=host.split(":")[0])
    state = row["backend_state"]
    state = state if isinstance(state, dict) else json.loads(state)
    return row["upstream"], state["pid"]


def start_berth_nginx(run, config, cache_seconds, auth_server=None, name=None):
    """Another nginx with Berth's own rendered configuration, in front of the same auth and web
    (or of another auth server, host:port). Returns (port, process)."""
    from berth.nginx_conf import prepare_prefix, render_nginx

    def configuration(prefix, port):
        prepare_prefix(prefix)
        # No access log, as the plain nginx it is measured against has none.
        return render_nginx({**config, "BERTH_AUTH_CACHE_SECONDS": cache_seconds,
                             "BERTH_NGINX_ACCESS_LOG": "off"}, standalone=True,
                            prefix=str(prefix), listen=f"127.0.0.1:{port}",
                            auth_servers=[auth_server] if auth_server else None)

    return run.start_nginx(name or f"berth-nginx-cache-{cache_seconds}", configuration, "Berth's nginx")


def start_plain_nginx(run, http, **upstreams):
    """The plain nginx peer, its http block's directives from the template http, filled with its
    port and the upstreams (host:port). Returns (port, process)."""
    def configuration(prefix, port):
        return NGINX_CONF.format(workers="auto", prefix=prefix, http=http.format(port=port, **upstreams))

    return run.start_nginx("plain", configuration, "plain nginx")


def control_plane_mb(kib_by_group):
    return mb(sum(kib_by_group[name] for name in CONTROL_PLANE))


# -- the run ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep)
        self.work = self.run_state.work

    # setup
    def start_berth(self):
        catalogue = write_catalogue(self.work, [static_tool(self.work, {PATH.lstrip("/"): BODY})])
        # Berth as shipped, with its default one-second auth cache; the "berth uncached" path is
        # a second nginx rendered with the cache off.
        self.berth = Berth(self.run_state, catalogue, postgres=self.args.postgres, isolation=self.args.isolation)
        self.berth.start()
        self.stack, self.config, self.port = self.berth.processes, self.berth.config, self.berth.port
        with self.berth.sign_in() as browser:
            self.tool_host = self.berth.start_tool(browser, SLUG, PATH)
            self.cookie = self.berth.cookie_for(browser, self.tool_host)
        self.upstream, self.tool_pid = running_instance(self.berth, self.tool_host)  # sh execs nginx

    def start_plain_nginx(self):
        self.plain_port, self.plain = start_plain_nginx(self.run_state, PLAIN_HTTP, upstream=self.upstream)

    def start_noop_auth(self):
        """The no-op auth service, and a Berth nginx in front of it (the "no-op auth" path)."""
        from auth_service.check import nginx_upstream
        from deploy.local import auth_server_command

        port = free_port()
        env = {**self.stack.env, "BENCH_UPSTREAM": nginx_upstream(self.config, self.upstream)}
        self.noop_auth = self.run_state.start(
            auth_server_command(env, "127.0.0.1", port, app="bench._noop_auth:create_app"),
            self.work / "noop-auth.log", [port], "the no-op auth service", env=env)
        self.noop_port, self.noop_nginx = start_berth_nginx(self.run_state, self.config, 0,
                                                            auth_server=f"127.0.0.1:{port}",
                                                            name="berth-nginx-noop-auth")

    def start_chp(self):
        self.chp = Chp(self.run_state).start()
        self.chp.add_route("/", f"http://{self.upstream}")

    # measuring
    def targets(self):
        tool_ip, tool_port = self.upstream.rsplit(":", 1)
        return {
            "direct": {"ip": tool_ip, "port": int(tool_port)},
            "plain nginx": {"port": self.plain_port},
            "chp": {"port": self.chp.port},
            "no-op auth": {"port": self.noop_port, "host": self.tool_host, "cookie": self.cookie},
            "berth uncached": {"port": self.uncached_port, "host": self.tool_host, "cookie": self.cookie},
            "berth": {"port": self.port, "host": self.tool_host, "cookie": self.cookie},
        }

    def check_targets(self, targets):
        for name, target in targets.items():
            status, body = fetch(**target)
            if status != 200 or body != BODY:
                raise RuntimeError(f"{name}: expected 200 and the 1 KB body, got {status}, {body[:200]!r}")

    def run_wrk(self, target, duration):
        headers = {}
        if target.get("host"):
            headers["Host"] = target["host"]
        if target.get("cookie"):
            headers["Cookie"] = target["cookie"]
        return run_wrk(self.run_state, f"http://{target.get('ip', '127.0.0.1')}:{target['port']}{PATH}", duration,
                       threads=self.args.threads, connections=self.args.connections, headers=headers)

    def measure(self):
        targets = self.targets()
        self.check_targets(targets)
        self.load_before = os.getloadavg()[0]
        roots = {name: process.pid for name, process in self.stack.processes.items()}
        roots["tool (upstream nginx)"] = self.tool_pid
        roots["plain nginx"] = self.plain.pid
        roots["nginx (uncached)"] = self.uncached.pid
        roots["chp"] = self.chp.process.pid
        roots["no-op auth"] = self.noop_auth.pid
        sampler = MemorySampler(roots)
        sampler.start()
        try:
            for name in PATHS:  # warm-up, not counted: connections, gunicorn threads, caches
                self.run_wrk(targets[name], 1)
            rounds = []
            for index in range(self.args.rounds):
                order = rotated(PATHS, index)
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
        for name in PATHS:
            summary[name]["ratio_to_chp"] = summary[name]["requests_per_s"] / summary["chp"]["requests_per_s"]
        idle_control_plane = control_plane_mb({name: kib for name, (kib, _) in sampler.before.items()})
        self.idle_pss = control_plane_mb(sampler.before_pss)
        return summary, memory, self.check_goals(summary, idle_control_plane)

    def check_goals(self, summary, idle_control_plane):
        """Berth's targets for this benchmark, from this run's numbers."""
        ratio = {name: row["ratio_to_plain_nginx"] for name, row in summary.items()}
        chp = summary["chp"]
        over_noop = summary["berth uncached"]["requests_per_s"] / summary["no-op auth"]["requests_per_s"]
        c = self.args.connections
        return [
            check_target("Berth (default) req/s ÷ plain nginx", ratio["berth"], 0.6, unit="×"),
            check_target(f"Berth (default) p99 at {c} connections (ms)", summary["berth"]["p99_ms"],
                         chp["p99_ms"], higher_is_better=False, note="goal: chp's p99"),
            check_target("Berth uncached req/s ÷ no-op auth hop", over_noop, 0.8, unit="×"),
            check_target(f"Berth uncached p99 at {c} connections (ms)", summary["berth uncached"]["p99_ms"],
                         chp["p99_ms"], higher_is_better=False, note="goal: chp's p99"),
            check_target("control plane PSS at idle, MB (auth+web+worker)", self.idle_pss, 250.0,
                         higher_is_better=False, note=f"before the load; RSS {idle_control_plane:.0f} MB"),
        ]

    def report(self, summary, memory, goals, rounds):
        args = self.args
        database = "PostgreSQL + Redis" if args.postgres else "SQLite + Huey on SQLite"
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency, "
              f"{args.rounds} round(s), median of rounds; 1 KB static file from nginx (1 worker); "
              f"Berth on {database}, tools in isolation {args.isolation}; configurable-http-proxy {chp_version()}; "
              f"{os.cpu_count()} CPUs, all on this machine; "
              f"load average {self.load_before:.1f} before, {self.load_after:.1f} after\n")
        print(f"{'path':<16}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'× plain nginx':>15}"
              f"{'per round':>18}{'× chp':>8}{'sock err':>10}")
        for name in PATHS:
            row = summary[name]
            per_round = ", ".join(f"{ratio:.2f}" for ratio in row["ratio_per_round"])
            print(f"{name:<16}{row['requests_per_s']:>10.0f}{row['p50_ms']:>9.2f}{row['p99_ms']:>9.2f}"
                  f"{row['ratio_to_plain_nginx']:>15.2f}{per_round:>18}{row['ratio_to_chp']:>8.2f}"
                  f"{row['socket_errors']:>10}")
        share = summary["berth uncached"]["requests_per_s"] / summary["no-op auth"]["requests_per_s"]
        print(f"\nno-op auth: Berth's nginx with an auth service that answers at once (the hop alone). "
              f"Uncached Berth reaches {share:.2f}× of it.")
        print(f"\n{'process group':<24}{'processes':>10}{'RSS before MiB':>16}{'peak MiB':>10}")
        for name, row in memory.items():
            print(f"{name:<24}{row['processes']:>10}{row['before_mib']:>16.1f}{row['peak_mib']:>10.1f}")
        print(f"control plane (auth+web+worker) at idle: PSS {self.idle_pss:.0f} MB (shared pages "
              f"counted once), RSS as below")
        print_targets(goals)
        write_results(self.args.json or RESULTS, "bench.proxy", {
            "wrk": {"threads": args.threads, "connections": args.connections,
                    "duration_s": args.duration, "rounds": args.rounds},
            "database": "postgres" if args.postgres else "sqlite",
            "isolation": args.isolation,
            "chp_version": chp_version(),
            "cpus": os.cpu_count(),
            "load_average_1min": {"before": self.load_before, "after": self.load_after},
            "body_bytes": len(BODY),
            "summary": summary,
            "rss": memory,
            "control_plane_idle_pss_mb": self.idle_pss,
            "targets": goals,
            "rounds": rounds,
        })

    # the whole run
    def execute(self):
        self.start_berth()
        self.start_plain_nginx()
        self.start_chp()
        self.start_noop_auth()
        self.uncached_port, self.uncached = start_berth_nginx(self.run_state, self.config, 0)
        rounds, sampler = self.measure()
        summary, memory, goals = self.summarise(rounds, sampler)
        self.report(summary, memory, goals, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk measurement (10)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every path (2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (32)")
    parser.add_argument("--isolation", choices=("namespaces", "single-user"),
                        default="namespaces" if os.geteuid() == 0 else "single-user",
                        help="BERTH_TOOL_ISOLATION for the tool: Berth's default, namespaces, needs "
                             "root (default: namespaces as root, else single-user)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.duration < 1 or args.rounds < 1:
        parser.error("--duration and --rounds must be at least 1")
    require("wrk")
    chp_command()  # installs configurable-http-proxy (npm ci) before anything starts
    run_benchmark(Bench(args))


if __name__ == "__main__":
    main()
