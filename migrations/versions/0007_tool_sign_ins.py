"""Tool sign-ins: per-host cookies for tool hosts, issued by the sign-in hand-off

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 00:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'tool_sign_ins',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('session_id', sa.Integer(), nullable=False),
        sa.Column('host', sa.String(length=255), nullable=False),
        sa.Column('code_hash', sa.String(length=64), nullable=False),
        sa.Column('code_expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('redeemed_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['session_id'], ['sessions.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('code_hash'),
        sa.UniqueConstraint('token_hash'),
    )
    with op.batch_alter_table('tool_sign_ins', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tool_sign_ins_session_id'), ['session_id'], unique=False)


def downgrade():
    with op.batch_alter_table('tool_sign_ins', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tool_sign_ins_session_id'))
    op.drop_table('tool_sign_ins')
