"""Who filed a case: the logged-in resident behind each report.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22

Residents may read only the cases they filed. The link is kept in its own table,
one row per case filed by a logged-in user, so the reporter's identity sits apart
from the public case row and anonymous reports simply have no row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "case_reporters",
        sa.Column("case_id", sa.Integer, sa.ForeignKey("cases.id"), primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
    )
    op.create_index("ix_case_reporters_username", "case_reporters", ["username"])


def downgrade() -> None:
    op.drop_index("ix_case_reporters_username", table_name="case_reporters")
    op.drop_table("case_reporters")
