"""What the /metrics wrapper (berth.metrics.TimedAuthCheck) adds to each auth check, in-process.

    .venv/bin/python -m bench.metrics_overhead [--calls 10000] [--rounds 5]

Calls the auth service's WSGI app directly (no HTTP, no nginx) on a throwaway SQLite database:
a signed-in request to the main host (200: one indexed query) and one without a session (401),
each with and without the wrapper, interleaved over several rounds; prints the fastest round's
µs per call of each and the difference. The wrapper writes to prometheus_client's multiprocess files,
as in production.
"""
import argparse
import os
import sys
import tempfile
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()

    os.environ["BERTH_DATA_DIR"] = tempfile.mkdtemp(prefix="berth-bench-metrics-")
    from flask_migrate import upgrade

    from auth_service import create_app
    from auth_service.sessions import start_session
    from berth.extensions import db
    from berth.metrics import TimedAuthCheck
    from berth.models import User

    from webapp import create_app as create_web_app

    with create_web_app().app_context():
        upgrade(directory=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                       "migrations"))
    app = create_app()
    with app.app_context():
        user = User(email="bench@example.org", name="bench")
        db.session.add(user)
        db.session.commit()
        token = start_session(user, lifetime_seconds=3600)
        db.session.commit()

    wrapped = app.wsgi_app.app  # inside RequestIds (berth/logs.py), which sets the request id
    assert isinstance(wrapped, TimedAuthCheck)
    bare = wrapped.app
    config = app.config
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/auth/check", "HTTP_X_ORIGINAL_HOST": config["BERTH_DOMAIN"],
            "HTTP_X_ORIGINAL_URI": "/", "HTTP_X_BERTH_PROXY_SECRET": config["BERTH_PROXY_SECRET"]}
    cases = {
        "200 (session, main host)": {**base, "HTTP_COOKIE": f"{config['BERTH_SESSION_COOKIE']}={token}"},
        "401 (no session)": base,
    }

    def start_response(status, headers, exc_info=None):
        start_response.status = status

    def per_call(wsgi, environ):
        began = time.perf_counter()
        for _ in range(options.calls):
            wsgi(dict(environ), start_response)
        return (time.perf_counter() - began) / options.calls * 1e6

    for name, environ in cases.items():
        per_call(bare, environ)  # warm up: connections, caches
        wsgi_status = start_response.status
        with_wrapper, without = [], []
        for _ in range(options.rounds):
            without.append(per_call(bare, environ))
            with_wrapper.append(per_call(wrapped, environ))
        # The fastest round of each: on a busy machine the slower rounds measure the neighbours.
        plain, timed = min(without), min(with_wrapper)
        print(f"{name:28} answered {wsgi_status!r}: {plain:7.1f} µs bare, {timed:7.1f} µs wrapped, "
              f"+{timed - plain:5.1f} µs per call ({(timed - plain) / plain:+.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
