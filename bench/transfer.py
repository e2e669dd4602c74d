"""Long transfers through the proxies: WebSocket echo throughput and 1 GiB downloads, with memory.

    python -m bench.transfer [--ws-duration 5] [--rounds 2] [--ws-connections 4] [--ws-bytes 16384]

Two tools that Berth launches through the normal flow (sign in, first visit, RUNNING):

  static  nginx (1 worker) serving a 1 GiB file (sparse: zeros from the page cache, sendfile)
  echo    berth_tools.echo (aiohttp): WebSocket echo on /ws, and /download?bytes=N, which
          streams N bytes in 64 KiB writes from Python

and the same paths as bench.proxy: direct to the tools' ports, plain nginx (keepalive
upstreams, WebSocket upgrade, proxy_buffering off), configurable-http-proxy (routes /ws →
echo, /download and /upload → echo, / → static, through its API), Berth's nginx with the auth
cache off, and Berth's own nginx as shipped (its default 1 s auth cache).

Per path and round:
  ws        --ws-connections WebSockets each send a --ws-bytes binary message and wait for the
            echo, for --ws-duration seconds (an aiohttp client in this process): messages/s and MB/s
  file      one `curl -o /dev/null` of the 1 GiB file from the static tool: MB/s
  stream    one `curl -o /dev/null` of 1 GiB streamed by the echo tool: MB/s
  upload    one `curl -T` (POST) of a 1 GiB file to the echo tool's /upload, which reads it as a
            stream and answers its length: MB/s

During each transfer the RSS of the proxy's process group and of Berth's control plane (auth,
web, worker) is sampled every 0.1 s: memory is flat when the peak minus the start is small.
Paths take turns in a rotated order each round; figures are medians over the rounds, and
ratios are to plain nginx, configurable-http-proxy and direct. A "targets" section checks
Berth's: each transfer ≥ 1.0× configurable-http-proxy and ≥ 0.8× direct, nginx's memory flat,
and the control plane ≤ 250 MB PSS at idle. Results go to bench/results/transfer.json, or to
--json FILE.

Then --ws-many (1000) WebSockets at once through Berth as shipped, each echoing ten 1 KiB
messages: the RSS and CPU time of nginx, auth, web and worker, before, with all open, and after.

Everything listens on 127.0.0.1; everything started is stopped at the end, as in bench.proxy.
"""
import argparse
import asyncio
import os
import statistics
import subprocess
import time

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
    mb,
    print_targets,
    require,
    rotated,
    run_benchmark,
    write_results,
)
from bench.proxy import CONTROL_PLANE, control_plane_mb, running_instance, start_berth_nginx
from bench.proxy import start_plain_nginx, static_tool, write_catalogue
from tests.services import group_rss

RESULTS = ROOT / "bench" / "results" / "transfer.json"
GIB = 1 << 30
FILE = "1g.bin"
PATHS = ("direct", "plain nginx", "chp", "berth uncached", "berth")
BERTH_PATHS = ("berth uncached", "berth")
KINDS = ("ws", "file", "stream", "upload")
FLAT_MB = 10.0  # "flat memory": the peak during a transfer at most this far above its start

# Plain nginx with Berth's proxy settings, keepalive upstreams, and WebSocket upgrades.
PLAIN_HTTP = """\
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ""      "";
    }}
    upstream static {{ server {static}; keepalive 64; }}
    upstream echo {{ server {echo}; keepalive 64; }}
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $connection_upgrade;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 1h;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass http://static; }}
        location /ws {{ proxy_pass http://echo; }}
        location /download {{ proxy_pass http://echo; }}
        location /upload {{ proxy_pass http://echo; }}
    }}
"""

ECHO = {"slug": "echo", "name": "Echo", "description": "berth_tools.echo: the benchmark's WebSocket upstream.",
        "command": ["{python}", "-m", "berth_tools.echo", "--port", "{port}"], "health_path": "/headers",
        "spawn_timeout": 60, "idle_timeout": 3600}


async def websocket_echo(url, headers, connections, size, duration):
    """connections WebSockets, each sending one message of size bytes and awaiting its echo, in a loop."""
    import aiohttp

    payload = os.urandom(size)
    counts = [0] * connections
    deadline = time.monotonic() + duration

    async def one(index, session):
        async with session.ws_connect(url, headers=headers, max_msg_size=0, autoping=True) as socket:
            while time.monotonic() < deadline:
                await socket.send_bytes(payload)
                message = await socket.receive()
                if message.type != aiohttp.WSMsgType.BINARY or len(message.data) != size:
                    raise RuntimeError(f"{url}: not the echo: {message.type} {str(message.data)[:100]}")
                counts[index] += 1

    async with aiohttp.ClientSession() as session:
        started = time.monotonic()
        await asyncio.gather(*(one(index, session) for index in range(connections)))
        elapsed = time.monotonic() - started
    messages = sum(counts)
    return {"messages": messages, "seconds": elapsed, "messages_per_s": messages / elapsed,
            "mb_per_s": 2 * messages * size / elapsed / 1e6}  # both directions


def group_cpu_seconds(root):
    """CPU time (user + system, s) that root's process group has used so far."""
    from tests.services import process_group

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_group(root):
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


async def many_websockets(url, headers, count, rounds, size, sample):
    """count WebSockets open at once, each echoing rounds messages of size bytes one after
    another; sample() is called once all are open and again after the echoes."""
    import aiohttp

    payload = os.urandom(size)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        sockets = await asyncio.gather(*(session.ws_connect(url, headers=headers, max_msg_size=0)
                                         for _ in range(count)))
        try:
            opened = sample()

            async def echo(socket):
                for _ in range(rounds):
                    await socket.send_bytes(payload)
                    message = await socket.receive()
                    if message.type != aiohttp.WSMsgType.BINARY or len(message.data) != size:
                        raise RuntimeError(f"{url}: not the echo: {message.type}")

            started = time.monotonic()
            await asyncio.gather(*(echo(socket) for socket in sockets))
            seconds = time.monotonic() - started
            echoed = sample()
        finally:
            await asyncio.gather(*(socket.close() for socket in sockets), return_exceptions=True)
    return opened, echoed, seconds


class Transfer:
    def __init__(self, args):
        self.args = args
        self.run_state = BenchRun(keep=args.keep, prefix="berth-bench-transfer-")
        self.work = self.run_state.work

    # setup
    def start(self):
        catalogue = write_catalogue(self.work, [
            static_tool(self.work, {FILE: GIB, "index.html": b"ok\n"}, health_path="/index.html"), ECHO])
        self.berth = Berth(self.run_state, catalogue, postgres=self.args.postgres)  # as shipped: the 1 s cache
        self.upload_file = self.work / "upload-1g.bin"
        with open(self.upload_file, "wb") as out:
            out.truncate(GIB)  # sparse: zeros from the page cache
        self.berth.start()
        self.stack, self.config = self.berth.processes, self.berth.config
        with self.berth.sign_in() as browser:
            self.hosts = {"static": self.berth.start_tool(browser, "static", "/index.html"),
                          "echo": self.berth.start_tool(browser, "echo", "/headers")}
            self.cookies = {slug: self.berth.cookie_for(browser, host) for slug, host in self.hosts.items()}
        self.upstreams, self.tool_pids = {}, {}
        for slug, host in self.hosts.items():
            self.upstreams[slug], self.tool_pids[slug] = running_instance(self.berth, host)
        plain_port, self.plain = start_plain_nginx(self.run_state, PLAIN_HTTP, **self.upstreams)
        # configurable-http-proxy
        self.chp = Chp(self.run_state).start()
        self.chp.add_route("/", f"http://{self.upstreams['static']}")
        self.chp.add_route("/ws", f"http://{self.upstreams['echo']}")
        self.chp.add_route("/download", f"http://{self.upstreams['echo']}")
        self.chp.add_route("/upload", f"http://{self.upstreams['echo']}")
        # Berth, uncached
        uncached_port, self.uncached = start_berth_nginx(self.run_state, self.config, 0)
        # path → (port, {tool: headers}, the process group that proxies)
        self.paths = {
            "direct": ({slug: (int(self.upstreams[slug].rsplit(":", 1)[1]), {}) for slug in self.hosts}, None),
            "plain nginx": ({slug: (plain_port, {}) for slug in self.hosts}, "plain nginx"),
            "chp": ({slug: (self.chp.port, {}) for slug in self.hosts}, "chp"),
            "berth uncached": ({slug: (uncached_port, self.berth_headers(slug)) for slug in self.hosts},
                               "nginx (uncached)"),
            "berth": ({slug: (self.berth.port, self.berth_headers(slug)) for slug in self.hosts}, "nginx"),
        }

    def berth_headers(self, slug):
        return {"Host": self.hosts[slug], "Cookie": self.cookies[slug]}

    # measuring
    def download(self, path, slug, url_path, upload=None):
        """One curl of url_path: a 1 GiB answer, or with upload (a file) a 1 GiB POST."""
        port, headers = self.paths[path][0][slug]
        command = ["curl", "-sS", "-o", "/dev/null", "--max-time", "300",
                   "-w", "%{http_code} %{size_download} %{size_upload} %{time_total}"]
        if upload:
            command += ["-T", str(upload), "-X", "POST", "-H", "Expect:"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        command.append(f"http://127.0.0.1:{port}{url_path}")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        self.run_state.children.append(process)
        try:
            output, errors = process.communicate(timeout=330)
        finally:
            self.run_state.children.remove(process)
        try:
            status, downloaded, uploaded, seconds = output.split()
        except ValueError:
            raise RuntimeError(f"curl failed on {path} {url_path}: {errors}") from None
        size = uploaded if upload else downloaded
        if status != "200" or int(size) != GIB:
            raise RuntimeError(f"{path} {url_path}: answered {status} with {size} bytes, not 200 and 1 GiB")
        return {"seconds": float(seconds), "mb_per_s": GIB / float(seconds) / 1e6}

    def websocket(self, path, duration):
        port, headers = self.paths[path][0]["echo"]
        return asyncio.run(websocket_echo(f"http://127.0.0.1:{port}/ws", headers, self.args.ws_connections,
                                          self.args.ws_bytes, duration))

    def transfer(self, path, kind, duration=None):
        if kind == "ws":
            return self.websocket(path, duration or self.args.ws_duration)
        if kind == "file":
            return self.download(path, "static", f"/{FILE}")
        if kind == "upload":
            return self.download(path, "echo", "/upload", upload=self.upload_file)
        return self.download(path, "echo", f"/download?bytes={GIB}")

    def measure(self):
        roots = {name: process.pid for name, process in self.stack.processes.items()}
        roots.update({"plain nginx": self.plain.pid, "nginx (uncached)": self.uncached.pid,
                      "chp": self.chp.process.pid})
        self.sampler = sampler = MemorySampler(roots)
        self.idle_control_plane = control_plane_mb({name: kib for name, (kib, _) in sampler.before.items()})
        self.idle_pss = control_plane_mb(sampler.before_pss)
        sampler.start()
        self.load_before = os.getloadavg()[0]
        try:
            for path in PATHS:  # warm-up: connections, the auth check, the page cache for the file
                self.transfer(path, "ws", duration=1)
            self.transfer("direct", "file")
            rounds = []
            for index in range(self.args.rounds):
                order = rotated(PATHS, index)
                measured = {}
                for path in order:
                    measured[path] = {}
                    group = self.paths[path][1]
                    for kind in KINDS:
                        start = sampler.open_window()
                        result = self.transfer(path, kind)
                        peak = sampler.close_window()
                        result["proxy_start_mb"] = mb(start[group]) if group else None
                        result["proxy_growth_mb"] = mb(peak[group] - start[group]) if group else None
                        result["control_plane_start_mb"] = control_plane_mb(start)
                        result["control_plane_growth_mb"] = mb(sum(peak[name] - start[name]
                                                                   for name in CONTROL_PLANE))
                        measured[path][kind] = result
                    print(f"  round {index + 1}/{self.args.rounds}  {path:<12} "
                          f"ws {measured[path]['ws']['mb_per_s']:>7.0f} MB/s  "
                          f"file {measured[path]['file']['mb_per_s']:>6.0f} MB/s  "
                          f"stream {measured[path]['stream']['mb_per_s']:>6.0f} MB/s  "
                          f"upload {measured[path]['upload']['mb_per_s']:>6.0f} MB/s", flush=True)
                rounds.append({"order": list(order), "paths": measured})
        finally:
            sampler.stop()
        self.load_after = os.getloadavg()[0]
        return rounds

    # reporting
    def summarise(self, rounds):
        summary = {}
        for path in PATHS:
            summary[path] = {}
            for kind in KINDS:
                runs = [r["paths"][path][kind] for r in rounds]
                row = {"mb_per_s": statistics.median(r["mb_per_s"] for r in runs)}
                if kind == "ws":
                    row["messages_per_s"] = statistics.median(r["messages_per_s"] for r in runs)
                if path != "direct":
                    row["proxy_growth_mb"] = max(r["proxy_growth_mb"] for r in runs)
                    row["proxy_start_mb"] = min(r["proxy_start_mb"] for r in runs)
                row["control_plane_growth_mb"] = max(r["control_plane_growth_mb"] for r in runs)
                summary[path][kind] = row
        for path in PATHS:
            for kind in KINDS:
                summary[path][kind]["ratio_to_plain_nginx"] = (
                    summary[path][kind]["mb_per_s"] / summary["plain nginx"][kind]["mb_per_s"])
        for path in PATHS:
            for kind in KINDS:
                row = summary[path][kind]
                row["ratio_to_chp"] = row["mb_per_s"] / summary["chp"][kind]["mb_per_s"]
                row["ratio_to_direct"] = row["mb_per_s"] / summary["direct"][kind]["mb_per_s"]
        goals = []
        labels = {"ws": "WebSocket echo", "file": "1 GiB file", "stream": "1 GiB streamed",
                  "upload": "1 GiB upload"}
        for path in BERTH_PATHS:
            for kind in KINDS:
                goals.append(check_target(f"{path}: {labels[kind]} ÷ chp",
                                          summary[path][kind]["ratio_to_chp"], 1.0, unit="×"))
                goals.append(check_target(f"{path}: {labels[kind]} ÷ direct",
                                          summary[path][kind]["ratio_to_direct"], 0.8, unit="×"))
        for path in BERTH_PATHS:
            for kind in KINDS:
                growth = summary[path][kind]["proxy_growth_mb"]
                goals.append(check_target(f"{path}: nginx RSS growth in {labels[kind]} (MB)", growth,
                                          FLAT_MB, higher_is_better=False, note="flat: peak − start"))
        growth = max(summary[path][kind]["control_plane_growth_mb"] for path in PATHS for kind in KINDS)
        goals.append(check_target("control plane RSS growth in any transfer (MB)", growth, FLAT_MB,
                                  higher_is_better=False))
        goals.append(check_target("control plane PSS at idle, MB (auth+web+worker)", self.idle_pss,
                                  250.0, higher_is_better=False,
                                  note=f"before the load; RSS {self.idle_control_plane:.0f} MB"))
        return summary, goals

    def report(self, summary, goals, rounds):
        args = self.args
        database = "PostgreSQL + Redis" if args.postgres else "SQLite + Huey on SQLite"
        print(f"\n{args.rounds} round(s), median of rounds; ws: {args.ws_connections} WebSockets × "
              f"{args.ws_bytes}-byte messages for {args.ws_duration} s (MB/s both directions); file: 1 GiB "
              f"from nginx; stream: 1 GiB from aiohttp; Berth on {database}; configurable-http-proxy "
              f"{chp_version()}; {os.cpu_count()} CPUs, load average {self.load_before:.1f} before, "
              f"{self.load_after:.1f} after\n")
        print(f"{'path':<16}{'ws MB/s':>9}{'file MB/s':>11}{'stream MB/s':>13}{'upload MB/s':>13}"
              f"{'× chp (ws/file/stream/upload)':>32}{'× direct':>22}{'proxy RSS MB':>14}{'max growth':>12}"
              f"{'ctl growth':>12}")
        for path in PATHS:
            row = summary[path]
            start = row["file"].get("proxy_start_mb")
            growth = max(row[kind].get("proxy_growth_mb") or 0 for kind in KINDS) if start is not None else None
            control = max(row[kind]["control_plane_growth_mb"] for kind in KINDS)
            to_chp = "/".join(f"{row[kind]['ratio_to_chp']:.2f}" for kind in KINDS)
            to_direct = "/".join(f"{row[kind]['ratio_to_direct']:.2f}" for kind in KINDS)
            print(f"{path:<16}{row['ws']['mb_per_s']:>9.0f}{row['file']['mb_per_s']:>11.0f}"
                  f"{row['stream']['mb_per_s']:>13.0f}{row['upload']['mb_per_s']:>13.0f}"
                  f"{to_chp:>32}{to_direct:>22}"
                  f"{(f'{start:.1f}' if start is not None else '-'):>14}"
                  f"{(f'{growth:.1f}' if growth is not None else '-'):>12}{control:>12.1f}")
        print("\nproxy RSS: the proxy's process group at the start of its transfers; max growth: the "
              "largest peak − start\nover its transfers; ctl growth: the same for auth + web + worker. "
              f"Control plane at idle: {self.idle_control_plane:.0f} MB RSS, "
              f"{self.idle_pss:.0f} MB PSS (shared pages counted once).")
        print_targets(goals)
        write_results(self.args.json or RESULTS, "bench.transfer", {
            "rounds": args.rounds, "ws_duration_s": args.ws_duration, "ws_connections": args.ws_connections,
            "ws_bytes": args.ws_bytes, "database": "postgres" if args.postgres else "sqlite",
            "chp_version": chp_version(), "cpus": os.cpu_count(),
            "load_average_1min": {"before": self.load_before, "after": self.load_after},
            "control_plane_idle_mb": self.idle_control_plane, "control_plane_idle_pss_mb": self.idle_pss,
            "summary": summary, "targets": goals, "rounds_raw": rounds,
            "many_websockets": self.many_websockets,
        })

    def many(self):
        """--ws-many WebSockets at once through Berth as shipped: nginx's and Berth's memory and CPU."""
        count = self.args.ws_many
        port, headers = self.paths["berth"][0]["echo"]
        groups = {"nginx": self.stack.processes["nginx"].pid,
                  **{name: self.stack.processes[name].pid for name in CONTROL_PLANE}}

        def sample():
            return {name: {"rss_mb": mb(group_rss(pid)[0]), "cpu_s": group_cpu_seconds(pid)}
                    for name, pid in groups.items()}

        before = sample()
        started = time.monotonic()
        opened, echoed, echo_seconds = asyncio.run(many_websockets(
            f"http://127.0.0.1:{port}/ws", headers, count, 10, 1024, sample))
        elapsed = time.monotonic() - started
        rows = {}
        for name in groups:
            rows[name] = {"rss_before_mb": before[name]["rss_mb"], "rss_open_mb": opened[name]["rss_mb"],
                          "rss_after_echo_mb": echoed[name]["rss_mb"],
                          "cpu_s": echoed[name]["cpu_s"] - before[name]["cpu_s"],
                          "cpu_share": (echoed[name]["cpu_s"] - before[name]["cpu_s"]) / elapsed}
        print(f"\n{count} WebSockets at once through Berth as shipped (opened, then 10 echoes of 1 KiB "
              f"each, {echo_seconds:.1f} s; {elapsed:.1f} s in all):\n")
        print(f"{'process group':<16}{'RSS before MB':>15}{'all open MB':>13}{'after echoes MB':>17}"
              f"{'CPU s':>8}{'CPU %':>8}")
        for name, row in rows.items():
            print(f"{name:<16}{row['rss_before_mb']:>15.1f}{row['rss_open_mb']:>13.1f}"
                  f"{row['rss_after_echo_mb']:>17.1f}{row['cpu_s']:>8.2f}{row['cpu_share'] * 100:>7.0f}%")
        return {"connections": count, "echoes_per_connection": 10, "message_bytes": 1024,
                "seconds": elapsed, "echo_seconds": echo_seconds, "groups": rows}

    def execute(self):
        self.start()
        rounds = self.measure()
        summary, goals = self.summarise(rounds)
        self.many_websockets = self.many() if self.args.ws_many else None
        self.report(summary, goals, rounds)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each measures every path (2)")
    parser.add_argument("--ws-duration", type=int, default=5, help="seconds of WebSocket echo per path (5)")
    parser.add_argument("--ws-connections", type=int, default=4, help="WebSockets at once (4)")
    parser.add_argument("--ws-bytes", type=int, default=16384, help="bytes per WebSocket message (16384)")
    parser.add_argument("--ws-many", type=int, default=1000,
                        help="then this many WebSockets at once through Berth, for memory and CPU (1000; 0: skip)")
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if min(args.rounds, args.ws_duration, args.ws_connections, args.ws_bytes) < 1:
        parser.error("--rounds, --ws-duration, --ws-connections and --ws-bytes must be at least 1")
    require("curl")
    chp_command()
    # A thousand WebSockets are two thousand sockets here and a thousand in the tool, which
    # inherits this limit through Berth's worker.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    run_benchmark(Transfer(args))


if __name__ == "__main__":
    main()
