"""Run a Python command line tool with *.localhost resolving to loopback, as browsers and curl do.

    python -m tests.localhost_cli schemathesis.cli:schemathesis run ...

Python's resolver here does not map tool.berth.localhost to 127.0.0.1 (see conftest.py); the
tests start tools such as the schemathesis CLI through this, in a process of their own.
"""
import importlib
import socket
import sys

_real_getaddrinfo = socket.getaddrinfo


def _getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and (host == "localhost" or host.endswith(".localhost")):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


def main():
    socket.getaddrinfo = _getaddrinfo
    module, _, function = sys.argv[1].partition(":")
    sys.argv = [module.rsplit(".", 1)[-1]] + sys.argv[2:]
    sys.exit(getattr(importlib.import_module(module), function)())


if __name__ == "__main__":
    main()
