"""Who may open what: template groups, shared tools, grants, identity headers, IP allowlists

The events table becomes append-only.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:10:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

# The application only ever adds events; the database refuses anything else, so that the
# audit log cannot be rewritten by a bug (or by anyone holding only the application's role).
_APPEND_ONLY = {
    'postgresql': [
        """
        CREATE FUNCTION berth_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'the events table is append-only';
        END $$
        """,
        """
        CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
        FOR EACH ROW EXECUTE FUNCTION berth_events_append_only()
        """,
    ],
    'sqlite': [
        """
        CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END
        """,
        """
        CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'the events table is append-only'); END
        """,
    ],
}
_DROP_APPEND_ONLY = {
    'postgresql': ['DROP TRIGGER events_append_only ON events',
                   'DROP FUNCTION berth_events_append_only()'],
    'sqlite': ['DROP TRIGGER events_no_update', 'DROP TRIGGER events_no_delete'],
}


def upgrade():
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shared', sa.Boolean(), nullable=False,
                                      server_default=sa.text('false')))
        batch_op.add_column(sa.Column('identity_headers', sa.Boolean(), nullable=False,
                                      server_default=sa.text('false')))
        batch_op.add_column(sa.Column('ip_allowlist', sa.JSON(), nullable=False,
                                      server_default=sa.text("'[]'")))

    op.create_table('template_groups',
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('group_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['template_id'], ['tool_templates.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('template_id', 'group_id')
    )

    op.create_table('tool_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('group_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(user_id IS NULL) <> (group_id IS NULL)', name='ck_tool_grants_one_grantee'),
    sa.ForeignKeyConstraint(['template_id'], ['tool_templates.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('host', 'user_id', name='uq_tool_grants_host_user'),
    sa.UniqueConstraint('host', 'group_id', name='uq_tool_grants_host_group')
    )
    with op.batch_alter_table('tool_grants', schema=None) as batch_op:
        batch_op.create_index('ix_tool_grants_host', ['host'], unique=False)

    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_actor', ['actor'], unique=False)
        batch_op.create_index('ix_events_user_id', ['user_id'], unique=False)

    for statement in _APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)


def downgrade():
    for statement in _DROP_APPEND_ONLY.get(op.get_bind().dialect.name, []):
        op.execute(statement)
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_user_id')
        batch_op.drop_index('ix_events_actor')
    with op.batch_alter_table('tool_grants', schema=None) as batch_op:
        batch_op.drop_index('ix_tool_grants_host')
    op.drop_table('tool_grants')
    op.drop_table('template_groups')
    with op.batch_alter_table('tool_templates', schema=None) as batch_op:
        batch_op.drop_column('ip_allowlist')
        batch_op.drop_column('identity_headers')
        batch_op.drop_column('shared')
