"""The Account page on the main host: the user's sessions (end any of them) and API tokens.

Request path: nginx → auth_service (session cookie only: API tokens never reach these pages)
→ webapp/account. Rules live in webapp/accounts.py (sessions) and webapp/tokens.py.
"""
