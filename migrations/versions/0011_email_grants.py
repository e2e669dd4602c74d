"""Grants to an email that has no account yet, so that sharing never tells which emails have one

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 03:50:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

ONE_GRANTEE = ("(CASE WHEN user_id IS NULL THEN 0 ELSE 1 END) + (CASE WHEN group_id IS NULL THEN 0 ELSE 1 END)"
               " + (CASE WHEN email IS NULL THEN 0 ELSE 1 END) = 1")


def upgrade():
    with op.batch_alter_table('tool_grants', schema=None) as batch_op:
        batch_op.add_column(sa.Column('email', sa.String(length=320), nullable=True))
        batch_op.drop_constraint('ck_tool_grants_one_grantee', type_='check')
        batch_op.create_check_constraint('ck_tool_grants_one_grantee', ONE_GRANTEE)
        batch_op.create_unique_constraint('uq_tool_grants_host_email', ['host', 'email'])


def downgrade():
    op.execute("DELETE FROM tool_grants WHERE email IS NOT NULL")
    with op.batch_alter_table('tool_grants', schema=None) as batch_op:
        batch_op.drop_constraint('uq_tool_grants_host_email', type_='unique')
        batch_op.drop_constraint('ck_tool_grants_one_grantee', type_='check')
        batch_op.create_check_constraint('ck_tool_grants_one_grantee', '(user_id IS NULL) <> (group_id IS NULL)')
        batch_op.drop_column('email')
