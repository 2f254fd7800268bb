"""Case workflow columns: the area chain, escalation bookkeeping, contact e-mail, status note.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

Plain ADD COLUMN on both stores (no batch rebuild, which would drop SpatiaLite's
geometry registration of `cases.geom`). Existing cases get their community and
street codes from the areas of the generation they were routed under.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column("cases", sa.Column("reporter_email", sa.String(200)))
    op.add_column("cases", sa.Column("community_code", sa.String(20)))
    op.add_column("cases", sa.Column("street_code", sa.String(20)))
    # Who holds an escalated case: a community or street code, or the department's name.
    op.add_column("cases", sa.Column("escalated_to", sa.String(100)))
    # The deadline the last escalation was for: `wangge escalate` acts once per deadline.
    op.add_column("cases", sa.Column("escalated_for", TZ))
    # The note of the latest step (a rejection's reason, a resolution), for status notes.
    op.add_column("cases", sa.Column("status_note", sa.Text))
    op.create_index("ix_cases_community_code", "cases", ["community_code"])
    op.create_index("ix_cases_street_code", "cases", ["street_code"])
    op.create_index("ix_cases_deadline_at", "cases", ["deadline_at"])
    op.execute(
        """
        UPDATE cases SET community_code = (
            SELECT a.parent_code FROM areas a
            WHERE a.generation_id = cases.generation_id AND a.code = cases.grid_code
        )
        WHERE grid_code IS NOT NULL
        """
    )
    op.execute(
        """
        UPDATE cases SET street_code = (
            SELECT a.parent_code FROM areas a
            WHERE a.generation_id = cases.generation_id AND a.code = cases.community_code
        )
        WHERE community_code IS NOT NULL
        """
    )


def downgrade() -> None:
    for name in ("ix_cases_deadline_at", "ix_cases_street_code", "ix_cases_community_code"):
        op.drop_index(name, table_name="cases")
    for column in (
        "status_note",
        "escalated_for",
        "escalated_to",
        "street_code",
        "community_code",
        "reporter_email",
    ):
        op.drop_column("cases", column)
