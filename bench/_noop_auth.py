"""A no-op auth service for bench.proxy's "no-op auth" path: every check is answered 200 at once.

Served by granian exactly as the real auth service is (deploy.local.auth_server_command), behind
Berth's own rendered nginx configuration, it measures what the auth_request hop costs by itself:
nginx's subrequest and the server's HTTP handling, with no Python work and no database. Berth's
uncached path can come close to this, never above it.
"""
import os


def create_app():
    answer = [("X-Berth-Upstream", os.environ["BENCH_UPSTREAM"]), ("Content-Length", "0")]

    def app(environ, start_response):
        start_response("200 OK", list(answer))
        return [b""]

    return app
