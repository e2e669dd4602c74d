"""Per-template egress: whether a tool may reach the network beyond Berth's host

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 21:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('egress', sa.Boolean(), nullable=False, server_default=sa.text('false')))


def downgrade():
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.drop_column('egress')
