"""Each role's start-up: what it waits for before it reports SERVING.

- rendezvous: nothing beyond its own server.
- validator: the SST reports SERVING (checked every ``--membership-poll-ms``); without
  it no proposal can commit, so the validator is not ready either.
- sst: connected to PostgreSQL, schema migrated and the log verified; afterwards, while
  PostgreSQL answers (pinged every ``--membership-poll-ms``, NOT_SERVING after two
  failures in a row, so one slow answer under load does not flap). Until then its
  server runs and answers NOT_SERVING / UNAVAILABLE with the reason, and it retries
  with backoff (a database that is not up yet, or not resolvable yet, is normal on
  Kubernetes). Refused credentials are retried too (the secret may be fixed), with an
  error-level log naming the cause; a log that fails verification stops the node.
- user: every user loaded from the SST (``UserNode.start_loading``).

Every role is also not ready while it is not in the current membership.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from beco_node.services.runtime import Runtime
from beco_node.sst.store import SstStore, StoreUnavailableError

log = logging.getLogger("beco.startup")

DB_CONDITION = "database"
DB_CONNECTING = "the SST is connecting to PostgreSQL"  # readiness reason until the store opens
MAX_BACKOFF_S = 10.0
# Refusals the database's owner can fix without restarting us (secret, role, database).
_FIXABLE = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
# The database went away during migration or loading: try again.
_TRANSIENT = (
    StoreUnavailableError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
)


def _cause(exc: BaseException) -> str:
    """What went wrong, without the DSN (asyncpg's messages name host, user, database)."""
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return f"PostgreSQL refused the password: {exc}"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return f"PostgreSQL refused the login: {exc}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"PostgreSQL has no such database: {exc}"
    return str(exc) or type(exc).__name__


async def open_store(rt: Runtime, *, first_delay_s: float = 0.5) -> SstStore:
    """Open the SST's store, waiting for PostgreSQL with backoff (NOT_SERVING meanwhile)."""
    rt.set_ready(DB_CONDITION, DB_CONNECTING)
    delay = first_delay_s
    last = ""
    while True:
        try:
            store = await SstStore.open(rt.settings.database_url, rt.key)
        except (*_TRANSIENT, *_FIXABLE) as exc:
            cause = _cause(exc)
            if not cause.startswith(("cannot connect", "PostgreSQL")):
                cause = f"cannot use PostgreSQL: {cause}"
            rt.set_ready(DB_CONDITION, f"the SST is waiting for PostgreSQL ({cause})")
            if cause != last:
                level = logging.ERROR if isinstance(exc, _FIXABLE) else logging.WARNING
                log.log(level, "%s; retrying (not serving meanwhile)", cause)
                last = cause
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_S)
            continue
        rt.set_ready(DB_CONDITION, None)
        log.info("PostgreSQL connected, log verified")
        return store


async def watch_database(rt: Runtime, store: SstStore, failures_allowed: int = 1) -> None:
    """Keep the database condition in step with PostgreSQL answering (see module doc)."""
    failures = 0
    while True:
        await asyncio.sleep(rt.settings.membership_poll_ms / 1000)
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            failures += 1
            if failures > failures_allowed:
                rt.set_ready(DB_CONDITION, f"the SST lost PostgreSQL ({_cause(exc)})")
            continue
        failures = 0
        rt.set_ready(DB_CONDITION, None)
