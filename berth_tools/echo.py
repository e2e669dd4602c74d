"""Echo: a tiny web tool that shows what a tool behind Berth sees.

    python -m berth_tools.echo --port 8000

  /              an HTML page: the request's headers and cookies, and a WebSocket echo box
  /headers       the request's headers and cookies as JSON, and the connection's far end (peer)
  /ws            WebSocket echo
  /upload        POST a body of any size; answers its length and SHA-256, read as a stream
  /download?bytes=N   N bytes, streamed
  /set-cookie?name=N&value=V&domain=D   sets a cookie, to test cookie scoping
  /files?path=P  GET a file's text (or a folder's entries, as JSON); PUT a body into a file.
                 P is relative to $HOME, or absolute (a team folder of $BERTH_TEAM_FOLDERS).
                 The tool's own user reads and writes, nothing more; errors answer 4xx with the reason.
"""
import argparse
import hashlib
import html
import json
import os

from aiohttp import WSMsgType, web

CHUNK = 64 * 1024


async def index(request):
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in request.headers.items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Echo</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem;color:#1d2430}} th{{text-align:left;padding-right:1rem}}
td,th{{border-bottom:1px solid #dde2ea;padding:.3rem}} #log{{background:#f6f7fa;padding:1rem;min-height:3rem}}</style>
</head><body><h1 id="title">Echo is running</h1>
<p>Instance {html.escape(os.environ.get("BERTH_INSTANCE_ID", "?"))}, path <code>{html.escape(request.path_qs)}</code></p>
<h2>WebSocket</h2><input id="msg" value="hello"> <button id="send">Send</button><pre id="log"></pre>
<h2>Request headers</h2><table>{rows}</table>
<script>
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
const log = document.getElementById("log");
ws.onopen = () => {{ log.textContent += "connected\\n"; document.body.dataset.ws = "open"; }};
ws.onmessage = (e) => {{ log.textContent += "echo: " + e.data + "\\n"; }};
document.getElementById("send").onclick = () => ws.send(document.getElementById("msg").value);
</script></body></html>"""
    return web.Response(text=page, content_type="text/html")


async def headers(request):
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return web.json_response({"headers": dict(request.headers), "cookies": dict(request.cookies),
                              "path": request.path_qs,
                              "peer": f"{peer[0]}:{peer[1]}" if peer else None})


async def websocket(request):
    socket = web.WebSocketResponse(max_msg_size=0)
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await socket.send_bytes(message.data)
    return socket


async def upload(request):
    digest, size = hashlib.sha256(), 0
    while True:
        chunk = await request.content.read(CHUNK)
        if not chunk:
            break
        digest.update(chunk)
        size += len(chunk)
    return web.json_response({"bytes": size, "sha256": digest.hexdigest()})


async def download(request):
    try:
        total = int(request.query.get("bytes", "1024"))
    except ValueError:
        return web.json_response({"error": "bytes must be a whole number"}, status=400)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream",
                                           "Content-Length": str(total)})
    await response.prepare(request)
    block = b"b" * CHUNK
    sent = 0
    while sent < total:
        piece = block[: min(CHUNK, total - sent)]
        await response.write(piece)
        sent += len(piece)
    await response.write_eof()
    return response


def _file_path(request):
    path = request.query.get("path", "")
    return os.path.join(os.environ.get("HOME") or os.getcwd(), path)


def _file_error(error):
    status = 404 if isinstance(error, FileNotFoundError) else 403
    return web.json_response({"error": f"{type(error).__name__}: {error.strerror or error}"}, status=status)


async def read_file(request):
    path = _file_path(request)
    try:
        if os.path.isdir(path):
            return web.json_response({"entries": sorted(os.listdir(path))})
        with open(path, encoding="utf-8") as handle:
            return web.Response(text=handle.read())
    except OSError as error:
        return _file_error(error)


async def write_file(request):
    path, body = _file_path(request), await request.read()
    try:
        with open(path, "wb") as handle:
            handle.write(body)
    except OSError as error:
        return _file_error(error)
    return web.json_response({"path": path, "bytes": len(body)}, status=201)


async def set_cookie(request):
    name = request.query.get("name", "tool_cookie")
    response = web.json_response({"set": name})
    response.set_cookie(name, request.query.get("value", "1"), domain=request.query.get("domain"),
                        path="/")
    return response


def make_app():
    app = web.Application(client_max_size=0)
    app.add_routes([
        web.get("/", index), web.get("/headers", headers), web.get("/ws", websocket),
        web.post("/upload", upload), web.get("/download", download),
        web.get("/set-cookie", set_cookie), web.get("/files", read_file), web.put("/files", write_file),
    ])
    app.router.add_route("*", "/{tail:.*}", headers)
    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--fail", help="write this to stderr and exit 3, to show a failed launch")
    args = parser.parse_args()
    if args.fail:
        raise SystemExit(print(args.fail, file=__import__("sys").stderr) or 3)
    web.run_app(make_app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
