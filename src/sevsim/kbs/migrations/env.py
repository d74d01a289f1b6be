"""Alembic's environment for the key broker's schema. There is no alembic.ini and no offline
(SQL script) mode: `sevsim.kbs.store.migration_config` hands over a connection, already in the
transaction that `Store.upgrade` commits, and the migrations run on it."""

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
