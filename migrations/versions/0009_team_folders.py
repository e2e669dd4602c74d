"""Team folders: a group may have a folder that its members' tools mount; storage usage, as the worker measures it

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 03:00:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    # On SQLite the table is rebuilt with AUTOINCREMENT, so that a deleted group's id (which
    # names its team folder's gid) is never handed out again; PostgreSQL's sequence never does.
    with op.batch_alter_table('groups', schema=None, recreate='auto',
                              table_kwargs={'sqlite_autoincrement': True}) as batch_op:
        batch_op.add_column(sa.Column('team_folder', sa.Boolean(), nullable=False, server_default=sa.text('false')))
    op.create_table(
        'storage_usage',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('kind', sa.String(length=10), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('complete', sa.Boolean(), nullable=False),
        sa.Column('measured_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('kind', 'name'),
    )


def downgrade():
    op.drop_table('storage_usage')
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_column('team_folder')
