"""The SST's durable state: users, committed changes and the Merkle log in PostgreSQL.

``store.SstStore`` is the only writer (one transaction per commit); ``schema``
holds the tables and the commit function; ``records`` the value types and errors.
The gRPC service that uses the store lives in ``beco_node.services.sst``.
"""
