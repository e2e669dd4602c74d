"""The admin pages on the main host, under /admin/: users, groups, templates, instances, usage, audit.

Request path: nginx → auth_service (session cookie) → webapp/admin, for administrators only
(views.admin_required). Every change goes through changes.py, which applies it and records an
audit event with the values before and after; reports.py reads the usage report and audit log
and writes them as CSV.
"""
