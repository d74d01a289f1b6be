"""The key broker's first schema: sessions, resources, policies, the audit log and the
at-rest key's digest.

A migration is history: it spells its schema out rather than importing sevsim.kbs.store's
tables, which move on with later revisions.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Creates the five tables."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.String(128), nullable=False, unique=True),
        sa.Column("tee", sa.String(32), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("expires", TIME, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attested_at", TIME),
        sa.Column("tee_pubkey", JSON),
        sa.Column("claims", JSON),
        sa.CheckConstraint("state IN ('challenged', 'consumed', 'attested')",
                           name="ck_sessions_state"),
    )
    op.create_index("ix_sessions_expires", "sessions", ["expires"])
    op.create_table(
        "resources",
        sa.Column("path", sa.String(255), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(12), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.Column("updated", TIME, nullable=False),
    )
    op.create_table(
        "policies",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("updated", TIME, nullable=False),
        sa.CheckConstraint("kind IN ('attestation', 'resource')", name="ck_policies_kind"),
    )
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  primary_key=True, autoincrement=True),
        sa.Column("time", TIME, nullable=False),
        sa.Column("session_id", sa.String(64)),
        sa.Column("client", sa.String(255)),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("resource", sa.String(255)),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("claims", JSON),
        sa.CheckConstraint("decision IN ('allowed', 'refused')", name="ck_audit_decision"),
        sqlite_autoincrement=True,  # ids never reused, so a reader paging by id misses none
    )
    op.create_index("ix_audit_time", "audit", ["time"])
    op.create_index("ix_audit_session_id", "audit", ["session_id"])
    op.create_table(
        "secret_key_check",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("created", TIME, nullable=False),
        sa.CheckConstraint("id = 1", name="ck_secret_key_check_one_row"),
    )


def downgrade() -> None:
    """Drops them (and every secret with them)."""
    for table in ("secret_key_check", "audit", "policies", "resources", "sessions"):
        op.drop_table(table)
