"""Readable tool addresses: each user's address name, and personal tools' hosts in the new form

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 06:10:00

"""
from alembic import op
import sqlalchemy as sa

from berth.hosts import MAX_ADDRESS_NAME_LENGTH, address_name_base, address_name_candidates


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

# The rows whose host names a personal tool: instances (live and past) and grants.
_HOSTED = ("tool_instances", "tool_grants")


def upgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('address_name', sa.String(length=MAX_ADDRESS_NAME_LENGTH), nullable=True))
    connection = op.get_bind()
    taken = set()
    names = {}
    # The oldest accounts first: they keep the plain name when two would share it.
    for user_id, email, name in connection.execute(sa.text("SELECT id, email, name FROM users ORDER BY id")):
        address_name = next(candidate for candidate in address_name_candidates(address_name_base(email, name))
                            if candidate not in taken)
        taken.add(address_name)
        names[user_id] = address_name
        connection.execute(sa.text("UPDATE users SET address_name = :name WHERE id = :id"),
                           {"name": address_name, "id": user_id})
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.alter_column('address_name', existing_type=sa.String(length=MAX_ADDRESS_NAME_LENGTH), nullable=False)
        batch_op.create_unique_constraint('uq_users_address_name', ['address_name'])
    _rename_hosts(connection, lambda slug, host_key, address_name: (f"{slug}-{host_key}.", f"{slug}--{address_name}."))


def downgrade():
    _rename_hosts(op.get_bind(), lambda slug, host_key, address_name: (f"{slug}--{address_name}.", f"{slug}-{host_key}."))
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_constraint('uq_users_address_name', type_='unique')
        batch_op.drop_column('address_name')


def _rename_hosts(connection, forms):
    """Personal tools' instances and grants move from one address form to the other: the part
    before the domain changes, the domain (whichever it was) stays."""
    for table in _HOSTED:
        rows = connection.execute(sa.text(
            f"SELECT r.id, r.host, t.slug, u.host_key, u.address_name FROM {table} r "
            "JOIN tool_templates t ON t.id = r.template_id JOIN users u ON u.id = r.owner_id "
            "WHERE NOT t.shared")).all()
        for row_id, host, slug, host_key, address_name in rows:
            old, new = forms(slug, host_key, address_name)
            if host.startswith(old):
                connection.execute(sa.text(f"UPDATE {table} SET host = :host WHERE id = :id"),
                                   {"host": new + host[len(old):], "id": row_id})
