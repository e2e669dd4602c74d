"""The core: Berth's domain, shared by both front doors and the worker.

    nginx → auth_service (the door) ─┐
                                      ├─→ berth (this package) ─→ database
    nginx → webapp (pages, API) ──────┘
    worker (huey_consumer berth.launch.tasks.huey) → berth.launch → berth.backends

What lives here: settings (settings.py), the schema (models.py), host names and addresses
(hosts.py, addresses.py), who may open what (access.py), accounts, sessions and tokens
(accounts.py, tokens.py), the catalogue of tool templates (catalogue.py), the launch path
(launch/) and the backends that run tools (backends/), metrics, nginx's configuration
(nginx_conf.py) and the Flask base both front doors build on (web/).

It never imports webapp or auth_service: the import contracts in tests/test_layers.py
keep it so.
"""
