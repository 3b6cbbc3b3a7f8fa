"""A real PostgreSQL server for local runs and tests (``EmbeddedPostgres``).

See ``embedded.py`` for the lifecycle and why it does not use pgserver's API, and
``binaries.py`` for where the server binaries come from and who runs them.
"""

from beco_node.pg.binaries import PostgresError
from beco_node.pg.embedded import EmbeddedPostgres, free_port

__all__ = ["EmbeddedPostgres", "PostgresError", "free_port"]
