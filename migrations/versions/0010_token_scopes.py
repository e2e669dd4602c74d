"""API token scopes; a deactivated user's tokens and sessions revoked for good

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 03:00:00

Tokens made before scopes existed get "launch": they keep doing what their users do with them
(reading, launching, stopping, sharing), but no token reaches the administration endpoints
until an administrator makes one with the admin scope. Tokens and sessions of users who are
deactivated now are revoked, as deactivation does from this version on, so that reactivating
such a user brings none of them back.
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.add_column(sa.Column('scope', sa.String(length=10), server_default='launch', nullable=False))
        batch_op.create_check_constraint('ck_api_tokens_scope', "scope IN ('read', 'launch', 'admin')")
    for table in ('api_tokens', 'sessions'):
        op.execute(f"UPDATE {table} SET revoked_at = CURRENT_TIMESTAMP WHERE revoked_at IS NULL "
                   "AND user_id IN (SELECT id FROM users WHERE NOT is_active)")


def downgrade():
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_constraint('ck_api_tokens_scope', type_='check')
        batch_op.drop_column('scope')
