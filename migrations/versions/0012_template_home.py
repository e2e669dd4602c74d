"""Templates may go without a home: their tools see none of their users' files

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 04:15:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('home', sa.Boolean(), server_default=sa.text('true'), nullable=False))


def downgrade():
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.drop_column('home')
