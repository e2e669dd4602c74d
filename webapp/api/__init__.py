"""The REST API (JSON) on the main host, under /api/; its OpenAPI 3 document is /api/openapi.json.

Request path: nginx → auth_service (a session cookie, or `Authorization: Bearer berth_...`) →
webapp/api. The views are thin: they validate the body against the same JSON schemas that
the OpenAPI document publishes (schemas.py), call the services the pages use (lifecycle,
tokens, accounts), and answer JSON. Every error is `{"error": "<what went wrong>"}`.
"""
