"""A loopback HTTP proxy in front of moto's server, for the ECS tests.

Berth's ECS client talks to this proxy (BERTH_ECS_ENDPOINT_URL), which forwards every request
to moto unchanged and adds what moto lacks:

- faults on demand: `answer("RunTask", 400, body, times=n)` answers the next n RunTask calls
  itself (throttling, Fargate's "no capacity", an IAM error), and `lose_answer("RunTask")`
  forwards the next call but replaces moto's answer with a server error, as when AWS acted
  and the answer never arrived;
- RunTask's clientToken idempotency, as AWS documents it: a RunTask whose token was already
  answered gets the first answer again, or ConflictException if its parameters differ; and
  EFS CreateAccessPoint's: a ClientToken already used is answered AccessPointAlreadyExists
  with the first access point's id.

EFS speaks REST (GET and POST on paths), ECS JSON over POST with X-Amz-Target; the calls of
both are named by their operation.

Faults travel the real path: HTTP, botocore's parsing, Berth's retries. Nothing in boto3 is
patched, and a worker in another process (the crash tests) meets the same faults. `calls`
logs every (operation, request body) for the tests to look at.
"""
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVER_ERROR = {"__type": "ServerException", "message": "Service Unavailable. Please try again later."}


class AwsProxy:
    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.calls = []
        self._rules = {}  # operation -> [(kind, status, body), ...], used up in order
        self._tokens = {}  # RunTask clientToken -> (request parameters, status, answer body)
        self._access_points = {}  # CreateAccessPoint ClientToken -> the access point's id
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the name http.server calls
                proxy._handle(self)

            do_GET = do_DELETE = do_PUT = do_POST  # noqa: N815

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def reset(self):
        with self.lock:
            self.calls.clear()
            self._rules.clear()
            self._tokens.clear()
            self._access_points.clear()

    # -- what the tests ask for ---------------------------------------------------------------
    def answer(self, operation, status, body, times=1):
        """Answer the next `times` calls of operation with status and body, without moto."""
        with self.lock:
            self._rules.setdefault(operation, []).extend([("answer", status, body)] * times)

    def lose_answer(self, operation, times=1):
        """Let moto act on the next `times` calls of operation, but answer a server error."""
        with self.lock:
            self._rules.setdefault(operation, []).extend([("lose", 500, SERVER_ERROR)] * times)

    def requests(self, operation):
        with self.lock:
            return [body for name, body in self.calls if name == operation]

    # -- the proxy ------------------------------------------------------------------------------
    def _handle(self, request):
        raw = request.rfile.read(int(request.headers.get("Content-Length") or 0))
        operation = ((request.headers.get("X-Amz-Target") or "").rpartition(".")[2]
                     or _REST_OPERATIONS.get((request.command, request.path.partition("?")[0]), ""))
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = {}
        with self.lock:
            self.calls.append((operation, body))
            rules = self._rules.get(operation) or []
            kind, status, answer = rules.pop(0) if rules else (None, None, None)
            token = body.get("clientToken") if operation == "RunTask" else None
            remembered = self._tokens.get(token) if token else None
            access_point_token = body.get("ClientToken") if operation == "CreateAccessPoint" else None
            access_point = self._access_points.get(access_point_token)
        if kind == "answer":
            return _reply(request, status, json.dumps(answer).encode())
        if access_point and kind is None:
            exists = {"ErrorCode": "AccessPointAlreadyExists", "AccessPointId": access_point,
                      "Message": "An access point with that client token already exists."}
            return _reply(request, 409, json.dumps(exists).encode(), error_type="AccessPointAlreadyExists")
        if remembered is not None and kind is None:
            parameters, status, answer = remembered
            if parameters != body:
                conflict = {"__type": "ConflictException",
                            "message": "The clientToken was used with different parameters."}
                return _reply(request, 400, json.dumps(conflict).encode())
            return _reply(request, status, answer)
        status, answer = self._forward(request, raw)
        if token and status == 200:
            with self.lock:
                self._tokens.setdefault(token, (body, status, answer))
        if access_point_token and status == 200:
            with self.lock:
                self._access_points.setdefault(access_point_token, json.loads(answer)["AccessPointId"])
        if kind == "lose":
            return _reply(request, 500, json.dumps(SERVER_ERROR).encode())
        return _reply(request, status, answer)

    def _forward(self, request, raw):
        headers = {key: value for key, value in request.headers.items()
                   if key.lower() not in ("connection", "content-length")}
        connection = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=30)
        try:
            connection.request(request.command, request.path, body=raw, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


_REST_OPERATIONS = {("POST", "/2015-02-01/access-points"): "CreateAccessPoint",
                    ("GET", "/2015-02-01/access-points"): "DescribeAccessPoints"}


def _reply(request, status, body, error_type=None):
    request.send_response(status)
    request.send_header("Content-Type", "application/x-amz-json-1.1")
    if error_type:
        request.send_header("x-amzn-ErrorType", error_type)
    request.send_header("x-amzn-RequestId", "berth-test-proxy")
    request.send_header("Content-Length", str(len(body)))
    request.end_headers()
    request.wfile.write(body)
