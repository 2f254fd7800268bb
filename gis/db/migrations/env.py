"""Alembic environment: run against the connection the caller hands in.

`gis.db.engine.migrate()` passes an open connection in `config.attributes`, so
migrations run on exactly the engine (and SpatiaLite setup) the service uses.
"""

from alembic import context
from geoalchemy2 import alembic_helpers  # noqa: F401  (registers the geospatial ops)

from gis.db.models import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    include_object=alembic_helpers.include_object,
    process_revision_directives=alembic_helpers.writer,
    render_item=alembic_helpers.render_item,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
