"""Alembic environment: runs with a connection handed in by ledger.db (migrate-on-open) or
standalone (`alembic upgrade head`, ledger from `-x db=...`, LEDGER_DB or ./ledger.db)."""

from __future__ import annotations

from alembic import context

from ledger.schema import metadata

config = context.config


def _configure_and_run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # Batch mode lets ALTERs work on SQLite by rebuilding tables; a migration that rebuilds an
        # event table must re-create its append-only triggers (ledger.schema.append_only_ddl).
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    from ledger.db import make_engine, resolve_url

    db = context.get_x_argument(as_dictionary=True).get("db")
    engine = make_engine(resolve_url(db))
    try:
        with engine.connect() as conn:
            _configure_and_run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) mode is not supported: the ledger migrates a live database")
run_migrations_online()
