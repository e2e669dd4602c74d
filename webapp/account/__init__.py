"""The Account page on the main host: the user's sessions (end any of them) and API tokens.

Request path: nginx → auth_service (session cookie only: API tokens never reach these pages)
→ webapp/account. Rules live in berth/accounts.py (sessions) and berth/tokens.py.
"""
