"""Each role's start-up: what it waits for before it reports SERVING.

- rendezvous: nothing beyond its own server.
- validator: the SST reports SERVING (checked every ``--membership-poll-ms``); without
  it no proposal can commit, so the validator is not ready either.
- sst: connected to PostgreSQL, schema migrated and the log verified; afterwards, while
  PostgreSQL answers (``watch_database``: pinged every ``--membership-poll-ms``, and at
  once when a query met a broken connection; NOT_SERVING at the first refused or broken
  connection, or after two timed-out pings in a row, so one slow answer under load does
  not flap; SERVING again at the first ping that succeeds). Until then its server runs
  and answers NOT_SERVING / UNAVAILABLE with the reason, and it retries with backoff
  (``backoff.Backoff``: 0.1 s doubling to a 2 s cap, jittered, on the runtime's clock;
  a database that is not up yet, or not resolvable yet, is normal on Kubernetes).
  Refused credentials are retried too (the secret may be fixed), with an error-level
  log naming the cause; a log that fails verification stops the node.
- user: every user loaded from the SST (``UserNode.start_loading``).

Every role is also not ready while it is not in the current membership.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import asyncpg

from beco_node.backoff import Backoff, DatabaseHealth
from beco_node.services.runtime import Runtime
from beco_node.sst.store import SstStore, StoreUnavailableError, said

log = logging.getLogger("beco.startup")

DB_CONDITION = "database"
DB_CONNECTING = "the SST is connecting to PostgreSQL"  # readiness reason until the store opens
# Retries of an unreachable database: a few seconds apart at most, so the SST serves again
# within about that of PostgreSQL answering.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 2.0
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
    return said(exc)


class Pingable(Protocol):
    """What ``watch_database`` needs of the store (``SstStore``)."""

    connection_lost: asyncio.Event

    async def ping(self) -> None: ...


def database_backoff() -> Backoff:
    return Backoff(first_s=FIRST_BACKOFF_S, cap_s=MAX_BACKOFF_S)


async def open_store(rt: Runtime, *, backoff: Backoff | None = None) -> SstStore:
    """Open the SST's store, waiting for PostgreSQL with backoff (NOT_SERVING meanwhile)."""
    rt.set_ready(DB_CONDITION, DB_CONNECTING)
    backoff = backoff or database_backoff()
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
            await rt.clock.sleep(backoff.next_delay())
            continue
        rt.set_ready(DB_CONDITION, None)
        log.info("PostgreSQL connected, log verified")
        return store


async def _sleep_or_wake(rt: Runtime, seconds: float, wake: asyncio.Event) -> None:
    """Sleep on the runtime's clock, cut short when ``wake`` is set."""
    if wake.is_set():
        return
    sleep = asyncio.ensure_future(rt.clock.sleep(seconds))
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait({sleep, woken}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleep, woken):
            t.cancel()


async def watch_database(
    rt: Runtime, store: Pingable, health: DatabaseHealth | None = None
) -> None:
    """Keep the database condition in step with PostgreSQL answering (see module doc)."""
    health = health or DatabaseHealth(rt.settings.membership_poll_ms / 1000, database_backoff())
    delay = health.poll_s
    while True:
        await _sleep_or_wake(rt, delay, store.connection_lost)
        store.connection_lost.clear()
        was = health.reason
        try:
            await store.ping()
        except StoreUnavailableError as exc:
            delay = health.failed(_cause(exc), timed_out=exc.timed_out)
        else:
            delay = health.succeeded()
        rt.set_ready(DB_CONDITION, health.reason)
        if health.reason != was:
            if health.reason is None:
                log.info("PostgreSQL answers again")
            else:
                log.warning("%s; retrying (not serving meanwhile)", health.reason)
