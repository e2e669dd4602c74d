"""How Berth's processes are started: the entrypoint for images, gunicorn's settings, and
local.py, which runs the whole stack on one machine (`berth run`, the tests, the benchmarks)."""
