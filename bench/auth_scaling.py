"""The auth check's latency as the database grows: 10 to 100,000 sessions and tool instances.

    python -m bench.auth_scaling [--levels 10,1000,10000,100000] [--duration 3] [--rounds 3]

On PostgreSQL (a throwaway server, as in the tests), Berth starts through deploy.local.Stack;
the benchmark user signs in and opens a tool (`static`, as in bench.proxy), so that its
session and its RUNNING instance are real. Then Berth is stopped, and its database is copied
once per level (CREATE DATABASE … TEMPLATE), and each copy is filled to its level with
SQL (generate_series), then VACUUM ANALYZE. One auth service per level (granian, Berth's own
settings, replicas of the same deployment) serves its copy, so that every level is present at
once and the measurements can take turns: wrk asks each service's GET /auth/check directly,
with the headers nginx sends (the proxy secret, X-Original-Host, X-Original-URI, the session
cookie), and the answer is the tool's upstream, as on every proxied request.

At level N: N/2 other users; N sessions (two per user; 5% revoked, 5% expired); N tool
instances: one recent instance per user, every tenth of them RUNNING, the rest STOPPED (95%)
or FAILED (5%) history. The benchmark user's own tool host also gets N/100 STOPPED instances
of history, so that the host lookup has old rows to skip.

Each level is measured at one connection (the latency of a single check, no queueing) and at
--connections (throughput). Within each round the levels take turns in a rotated order, so
that drift on the machine falls on all of them; figures are medians over the rounds. Ratios
are to the smallest level, with the target of issue #6: latency within ±10%. Results go to
bench/results/auth_scaling.json.

Everything listens on 127.0.0.1; everything started is stopped at the end, as in bench.proxy.
"""
import argparse
import os
import statistics
import time

from bench._stack import (
    ROOT,
    BenchRun,
    Berth,
    add_run_arguments,
    check_target,
    free_port,
    print_targets,
    run_benchmark,
    require,
    rotated,
    run_wrk,
    wait_for_port,
    write_results,
)
from bench.proxy import BODY, PATH, SLUG, running_instance, static_tool, write_catalogue

RESULTS = ROOT / "bench" / "results" / "auth_scaling.json"
FILL = "bench-fill"  # marks the generated rows (sessions.user_agent, tool_instances.step)

# Rows with fill number i in [lo, hi). Users: n/2 of them; each row's owner is i % users.
FILL_SQL = [
    """
    INSERT INTO users (email, name, is_admin, is_active, host_key, address_name, created_at)
    SELECT 'fill-' || i || '@bench.invalid', 'Fill ' || i, false, true,
           'f' || lpad(to_hex(i), 7, '0'), 'fill-' || i, now()
    FROM generate_series(:user_lo, :user_hi - 1) AS i
    """,
    """
    INSERT INTO sessions (token_hash, user_id, created_at, expires_at, revoked_at, client_ip,
                          user_agent, last_seen_at, method)
    SELECT encode(sha256(('fill-session-' || i)::bytea), 'hex'), u.id,
           now() - interval '1 hour',
           CASE WHEN i % 20 = 1 THEN now() - interval '1 minute' ELSE now() + interval '7 days' END,
           CASE WHEN i % 20 = 2 THEN now() - interval '5 minutes' END,
           i::text, :fill, now() - interval '2 minutes', 'password'
    FROM generate_series(:lo, :hi - 1) AS i
    JOIN users u ON u.email = 'fill-' || (i % :users) || '@bench.invalid'
    """,
    """
    INSERT INTO tool_instances (template_id, owner_id, host, state, step, backend, backend_state,
                                port, size, upstream, error_shown, created_at, started_at,
                                running_at, ended_at, last_activity_at)
    SELECT :template_id, u.id, :slug || '--' || u.address_name || '.' || :domain,
           CASE WHEN i < :users AND i % 10 = 0 THEN 'RUNNING'
                WHEN i % 20 = 3 THEN 'FAILED' ELSE 'STOPPED' END,
           :fill, 'process', '{}', 40000 + i, '{}',
           CASE WHEN i < :users AND i % 10 = 0 THEN '127.0.0.2:' || (40000 + i) END, true,
           now() - (i || ' seconds')::interval, now() - (i || ' seconds')::interval,
           now() - (i || ' seconds')::interval,
           CASE WHEN i < :users AND i % 10 = 0 THEN NULL ELSE now() END, now()
    FROM generate_series(:lo, :hi - 1) AS i
    JOIN users u ON u.email = 'fill-' || (i % :users) || '@bench.invalid'
    """,
    # The benchmark user's own history on the host that is checked.
    """
    INSERT INTO tool_instances (template_id, owner_id, host, state, step, backend, backend_state,
                                port, size, error_shown, created_at, started_at, running_at,
                                ended_at, last_activity_at)
    SELECT :template_id, :bench_user, :bench_host, 'STOPPED', :fill, 'process', '{}', 30000 + i,
           '{}', true, now() - interval '1 day', now() - interval '1 day', now() - interval '1 day',
           now() - interval '1 day', now() - interval '1 day'
    FROM generate_series(:own_lo, :own_hi - 1) AS i
    """,
    # Each filled session signed in on its user's tool host, as the sign-in hand-off does: the
    # check on a tool host finds its cookie here.
    """
    INSERT INTO tool_sign_ins (session_id, host, code_hash, code_expires_at, token_hash, created_at,
                               redeemed_at)
    SELECT s.id, :slug || '--' || u.address_name || '.' || :domain,
           encode(sha256(('fill-code-' || s.id)::bytea), 'hex'), now(),
           encode(sha256(('fill-tool-' || s.id)::bytea), 'hex'), now(), now()
    FROM sessions s JOIN users u ON u.id = s.user_id
    WHERE s.user_agent = :fill
    """,
]


def own_history(level):
    return level // 100


class AuthScaling:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep, prefix="berth-bench-auth-")
        self.services = {}  # level → (auth check URL, database URL)

    # setup
    def start(self):
        from berth.extensions import db

        work = self.run_state.work
        catalogue = write_catalogue(work, [static_tool(work, {PATH.lstrip("/"): BODY})])
        self.berth = Berth(self.run_state, catalogue, postgres=True)
        self.berth.start()
        with self.berth.sign_in() as browser:
            self.tool_host = self.berth.start_tool(browser, SLUG, PATH)
            self.cookie = self.berth.cookie_for(browser, self.tool_host)
        self.upstream, _ = running_instance(self.berth, self.tool_host)
        [row] = self.berth.query(
            "SELECT u.id AS user_id, t.id AS template_id FROM users u, tool_templates t "
            "WHERE u.email = :email AND t.slug = :slug", email=self.berth.user["email"], slug=SLUG)
        self.ids = dict(row)
        # The tool keeps running (its row says RUNNING in every copy); Berth's own processes stop,
        # so that nothing holds a connection to the database that is copied.
        for name in ("worker", "web", "nginx", "auth"):
            self.berth.processes.stop(name)
        with self.berth.app.app_context():
            db.engine.dispose()
        config = self.berth.config
        self.headers = {  # what nginx's /__berth_auth location sends
            "X-Berth-Proxy-Secret": config["BERTH_PROXY_SECRET"],
            "X-Original-Host": self.tool_host,
            "X-Original-URI": PATH,
            "X-Original-Method": "GET",
            "X-Real-IP": "127.0.0.1",
            "Cookie": self.cookie,
        }
        self.expected_upstream = f"berth_tool_{self.upstream.rsplit(':', 1)[1]}"
        base_url = os.environ["BERTH_DATABASE_URL"]
        base_name = base_url.rsplit("/", 1)[1]
        for level in self.args.levels:
            url = f"{base_url}_{level}"
            self.sql(base_url.rsplit("/", 1)[0] + "/postgres",
                     [f"CREATE DATABASE {base_name}_{level} TEMPLATE {base_name}"], {}, autocommit=True)
            seconds, counts = self.fill(url, level)
            name = f"auth-{level}"
            port = free_port()
            process = self.berth.processes.start(name, extra_env={"BERTH_DATABASE_URL": url}, port=port)
            wait_for_port(port, process=process, what=f"the auth service for level {level}")
            self.services[level] = {"url": f"http://127.0.0.1:{port}/auth/check", "counts": counts}
            self.check_answer(level)
            print(f"  level {level:>7}: {counts['sessions']:>7} sessions, {counts['instances']:>7} "
                  f"instances ({counts['running']} running), {counts['users']} users; "
                  f"filled in {seconds:.1f} s", flush=True)

    def check_answer(self, level):
        import requests

        answer = requests.get(self.services[level]["url"], headers=self.headers, timeout=10)
        upstream = answer.headers.get("X-Berth-Upstream")
        if answer.status_code != 200 or upstream not in (self.expected_upstream, self.upstream):
            raise RuntimeError(f"level {level}: the auth check answered {answer.status_code}, upstream "
                               f"{upstream!r}, not the running tool")

    # the data
    def sql(self, url, statements, params, autocommit=False, fetch=None):
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(url, poolclass=NullPool)
        try:
            options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
            with engine.connect().execution_options(**options) as connection:
                for statement in statements:
                    connection.execute(text(statement), params)
                row = connection.execute(text(fetch)).mappings().one() if fetch else None
                if not autocommit:
                    connection.commit()
                return row
        finally:
            engine.dispose()

    def fill(self, url, level):
        """Fill a copy of Berth's database to this level; (seconds taken, row counts)."""
        users = max(1, level // 2)
        started = time.monotonic()
        self.sql(url, FILL_SQL, {
            "user_lo": 0, "user_hi": users, "users": users, "lo": 0, "hi": level,
            "own_lo": 0, "own_hi": own_history(level), "fill": FILL,
            "template_id": self.ids["template_id"], "slug": SLUG,
            "domain": self.berth.config["BERTH_DOMAIN"], "bench_user": self.ids["user_id"],
            "bench_host": self.tool_host.split(":")[0],
        })
        self.sql(url, ["VACUUM ANALYZE"], {}, autocommit=True)
        counts = self.sql(url, [], {}, fetch=(
            "SELECT (SELECT count(*) FROM sessions) AS sessions, "
            "(SELECT count(*) FROM tool_instances) AS instances, "
            "(SELECT count(*) FROM tool_instances WHERE state = 'RUNNING') AS running, "
            "(SELECT count(*) FROM users) AS users"))
        return time.monotonic() - started, dict(counts)

    # measuring
    def measure(self):
        levels = self.args.levels
        c = self.args.connections
        for level in levels:  # warm-up, not counted: connections, prepared statements, caches
            run_wrk(self.run_state, self.services[level]["url"], 1, threads=1, connections=1,
                    headers=self.headers)
            run_wrk(self.run_state, self.services[level]["url"], 1, threads=self.args.threads,
                    connections=c, headers=self.headers)
        samples = {level: [] for level in levels}
        self.load_before = os.getloadavg()[0]
        for index in range(self.args.rounds):
            order = rotated(levels, index)
            for level in order:
                url = self.services[level]["url"]
                one = run_wrk(self.run_state, url, self.args.duration, threads=1, connections=1,
                              headers=self.headers)
                many = run_wrk(self.run_state, url, self.args.duration, threads=self.args.threads,
                               connections=c, headers=self.headers)
                samples[level].append({"c1": one, "cN": many, "counts": self.services[level]["counts"]})
                print(f"  round {index + 1}/{self.args.rounds}  level {level:>7}: c1 p50 "
                      f"{one['p50_us'] / 1000:.3f} ms, c{c} {many['requests_per_s']:.0f} req/s, "
                      f"p50 {many['p50_us'] / 1000:.2f} ms", flush=True)
        for level in levels:
            self.check_answer(level)
        self.load_after = os.getloadavg()[0]
        return samples

    # reporting
    def summarise(self, samples):
        summary = {}
        for level, runs in samples.items():
            summary[level] = {
                "measurements": len(runs),
                "counts": runs[-1]["counts"],
                "c1_p50_ms": statistics.median(r["c1"]["p50_us"] for r in runs) / 1000,
                "c1_p99_ms": statistics.median(r["c1"]["p99_us"] for r in runs) / 1000,
                "c1_requests_per_s": statistics.median(r["c1"]["requests_per_s"] for r in runs),
                "cN_p50_ms": statistics.median(r["cN"]["p50_us"] for r in runs) / 1000,
                "cN_p99_ms": statistics.median(r["cN"]["p99_us"] for r in runs) / 1000,
                "cN_requests_per_s": statistics.median(r["cN"]["requests_per_s"] for r in runs),
            }
        base = summary[min(summary)]
        goals = []
        for level, row in summary.items():
            for key in ("c1_p50_ms", "c1_p99_ms", "cN_p50_ms", "cN_p99_ms", "c1_requests_per_s",
                        "cN_requests_per_s"):
                row[key.replace("_ms", "").replace("_requests_per_s", "_rps") + "_ratio"] = row[key] / base[key]
            if level == min(summary):
                continue
            for key, label in (("c1_p50_ms", "c=1 p50"), ("cN_p50_ms", f"c={self.args.connections} p50")):
                ratio = row[key] / base[key]
                # ±10%: a ratio in [0.9, 1.1]; "missed by" is how far past the nearer bound.
                bound = 1.1 if ratio > 1 else 0.9
                goals.append(check_target(f"auth check {label} at {level:,} ÷ at {min(summary):,}",
                                          ratio, bound, higher_is_better=ratio <= 1, unit="×",
                                          note="goal: within ±10%; " + ("slower" if ratio > 1 else "faster")))
        return summary, goals

    def report(self, summary, goals):
        args = self.args
        c = args.connections
        print(f"\nGET /auth/check straight to the auth service (granian), wrk --latency, "
              f"{args.duration} s per measurement, {args.rounds} round(s), medians; "
              f"PostgreSQL, one database and one auth service (granian) per level; {os.cpu_count()} CPUs, load average {self.load_before:.1f} before, "
              f"{self.load_after:.1f} after\n")
        print(f"{'level':>8}{'sessions':>10}{'instances':>11}{'running':>9}"
              f"{'c1 p50':>9}{'c1 p99':>9}{'c1 req/s':>10}{f'c{c} req/s':>11}{f'c{c} p50':>9}{f'c{c} p99':>9}"
              f"{'× c1 p50':>10}{f'× c{c} p50':>11}{f'× c{c} req/s':>13}")
        for level, row in summary.items():
            counts = row["counts"]
            print(f"{level:>8}{counts['sessions']:>10}{counts['instances']:>11}{counts['running']:>9}"
                  f"{row['c1_p50_ms']:>9.3f}{row['c1_p99_ms']:>9.3f}{row['c1_requests_per_s']:>10.0f}"
                  f"{row['cN_requests_per_s']:>11.0f}{row['cN_p50_ms']:>9.2f}{row['cN_p99_ms']:>9.2f}"
                  f"{row['c1_p50_ratio']:>10.2f}{row['cN_p50_ratio']:>11.2f}{row['cN_rps_ratio']:>13.2f}")
        print("\nlatencies in ms; counts include the benchmark user's own session and instances;\n"
              "c1: one connection (wrk -t1 -c1), the latency of one check without queueing")
        print_targets(goals)
        write_results(self.args.json or RESULTS, "bench.auth_scaling", {
            "duration_s": args.duration, "rounds": args.rounds, "threads": args.threads,
            "connections": args.connections, "cpus": os.cpu_count(),
            "load_average_1min": {"before": self.load_before, "after": self.load_after},
            "summary": {str(level): row for level, row in summary.items()},
            "targets": goals,
        })

    def execute(self):
        self.start()
        summary, goals = self.summarise(self.measure())
        self.report(summary, goals)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10,1000,10000,100000",
                        help="rows of sessions and of tool instances at each step (10,1000,10000,100000)")
    parser.add_argument("--duration", type=int, default=3, help="seconds per wrk measurement (3)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each measures every level (3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads for the loaded run (2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for the loaded run (16)")
    add_run_arguments(parser, postgres=False)  # always PostgreSQL: it measures tables of that size
    args = parser.parse_args(argv)
    try:
        args.levels = sorted({int(level) for level in args.levels.split(",")})
    except ValueError:
        parser.error("--levels takes whole numbers separated by commas")
    if len(args.levels) < 2 or args.levels[0] < 1 or args.duration < 1 or args.rounds < 1:
        parser.error("at least two levels of 1 or more; --duration and --rounds at least 1")
    require("wrk", "nginx", "pg_ctl")
    run_benchmark(AuthScaling(args))


if __name__ == "__main__":
    main()
