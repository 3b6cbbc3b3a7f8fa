"""The SST's PostgreSQL schema, as numbered idempotent migrations, and the commit function.

Tables (all commits come from ``beco_commit_batch``, one statement per batch):

- ``users``: the current state of each user (opaque bytes) and its sequence;
- ``leaves``: the Merkle log, ``leaf_index`` dense from 0: the generated column
  ``prev_index`` must reference an existing leaf, so no gap can ever be stored;
- ``changes``: one row per committed proposal, ``proposal_id`` unique (idempotency),
  ``(user_id, sequence)`` unique (no lost or doubled update), one leaf per change;
- ``tree_heads``: the signed tree head after each batch of commits (plus the empty
  one; logs written before migration 4 have one per commit), whose ``tree_size`` must
  match an existing last leaf in the same way; a change's first covering head is the
  one of the smallest size above its leaf index;
- ``failed_proposals``: proposals answered as failed for good (``beco_fail``, under
  the same lock as commits): ``beco_commit`` refuses them, so a request a client was
  told failed can never commit later, whichever role restarts. A record goes
  (``beco_prune_failures``) once its request, by its signed timestamp ``signed_ms``,
  is past the admission horizon and so could never commit anyway; records without
  ``signed_ms`` (written before migration 3) stay.

``beco_commit_batch`` commits a batch server-side in one round trip: it takes a
transaction-scoped advisory lock (commits serialise even across processes), checks
every entry (a known proposal, a recorded failure, the sequence) and, if one is
refused, returns the refusals and writes nothing (the store drops them and re-signs
for the rest); otherwise it inserts the batch's rows into users, leaves and changes
(one multi-row statement each) and ONE signed tree head at the batch's end size. Any
error aborts the statement, and with it everything it wrote. (Migrations 1-3 had
``beco_commit``, one change and one head per call.)
"""

from __future__ import annotations

from typing import Any

MIGRATIONS: list[str] = [
    # 1: the initial schema
    """
    CREATE TABLE users (
        user_id     text PRIMARY KEY CHECK (length(user_id) BETWEEN 1 AND 256),
        sequence    bigint NOT NULL CHECK (sequence >= 1),
        state       bytea NOT NULL,
        updated_ms  bigint NOT NULL
    );

    CREATE TABLE leaves (
        leaf_index  bigint PRIMARY KEY CHECK (leaf_index >= 0),
        leaf_hash   bytea NOT NULL CHECK (length(leaf_hash) = 32),
        leaf_data   bytea NOT NULL,
        prev_index  bigint GENERATED ALWAYS AS (NULLIF(leaf_index, 0) - 1) STORED
                    REFERENCES leaves (leaf_index)
    );

    CREATE TABLE changes (
        proposal_id  text PRIMARY KEY CHECK (length(proposal_id) BETWEEN 1 AND 256),
        user_id      text NOT NULL REFERENCES users (user_id),
        sequence     bigint NOT NULL CHECK (sequence >= 1),
        kind         text NOT NULL CHECK (length(kind) BETWEEN 1 AND 64),
        leaf_index   bigint NOT NULL UNIQUE REFERENCES leaves (leaf_index),
        committed_ms bigint NOT NULL,
        UNIQUE (user_id, sequence)
    );

    CREATE TABLE tree_heads (
        tree_size    bigint PRIMARY KEY CHECK (tree_size >= 0),
        root_hash    bytea NOT NULL CHECK (length(root_hash) = 32),
        timestamp_ms bigint NOT NULL CHECK (timestamp_ms >= 0),
        signature    bytea NOT NULL CHECK (length(signature) = 64),
        last_leaf    bigint GENERATED ALWAYS AS (NULLIF(tree_size, 0) - 1) STORED
                     REFERENCES leaves (leaf_index)
    );

    CREATE FUNCTION beco_commit(
        p_proposal_id text, p_user_id text, p_sequence bigint, p_kind text, p_state bytea,
        p_leaf_index bigint, p_leaf_hash bytea, p_leaf_data bytea, p_committed_ms bigint,
        p_root bytea, p_sth_ms bigint, p_signature bytea)
    RETURNS TABLE (o_outcome text, o_leaf_index bigint, o_expected bigint, o_user_id text,
                   o_sequence bigint, o_kind text, o_leaf_hash bytea)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        cur bigint;
        ex record;
    BEGIN
        PERFORM pg_advisory_xact_lock(6962);
        SELECT c.user_id, c.sequence, c.kind, c.leaf_index, l.leaf_hash INTO ex
          FROM changes c JOIN leaves l ON l.leaf_index = c.leaf_index
         WHERE c.proposal_id = p_proposal_id;
        IF FOUND THEN
            RETURN QUERY SELECT 'duplicate'::text, ex.leaf_index, NULL::bigint, ex.user_id,
                                ex.sequence, ex.kind, ex.leaf_hash;
            RETURN;
        END IF;
        SELECT u.sequence INTO cur FROM users u WHERE u.user_id = p_user_id FOR UPDATE;
        IF COALESCE(cur, 0) + 1 <> p_sequence THEN
            RETURN QUERY SELECT 'sequence'::text, NULL::bigint, COALESCE(cur, 0) + 1, p_user_id,
                                p_sequence, p_kind, NULL::bytea;
            RETURN;
        END IF;
        INSERT INTO users (user_id, sequence, state, updated_ms)
             VALUES (p_user_id, p_sequence, p_state, p_committed_ms)
        ON CONFLICT (user_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state,
                 updated_ms = EXCLUDED.updated_ms;
        INSERT INTO leaves (leaf_index, leaf_hash, leaf_data)
             VALUES (p_leaf_index, p_leaf_hash, p_leaf_data);
        INSERT INTO changes (proposal_id, user_id, sequence, kind, leaf_index, committed_ms)
             VALUES (p_proposal_id, p_user_id, p_sequence, p_kind, p_leaf_index, p_committed_ms);
        INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)
             VALUES (p_leaf_index + 1, p_root, p_sth_ms, p_signature);
        RETURN QUERY SELECT 'committed'::text, p_leaf_index, NULL::bigint, p_user_id,
                            p_sequence, p_kind, p_leaf_hash;
    END
    $fn$;
    """,
    # 2: durable failures: a proposal recorded failed can never commit afterwards
    """
    CREATE TABLE failed_proposals (
        proposal_id text PRIMARY KEY CHECK (length(proposal_id) BETWEEN 1 AND 256),
        code        text NOT NULL CHECK (length(code) BETWEEN 1 AND 64),
        reason      text NOT NULL,
        failed_ms   bigint NOT NULL
    );

    CREATE OR REPLACE FUNCTION beco_commit(
        p_proposal_id text, p_user_id text, p_sequence bigint, p_kind text, p_state bytea,
        p_leaf_index bigint, p_leaf_hash bytea, p_leaf_data bytea, p_committed_ms bigint,
        p_root bytea, p_sth_ms bigint, p_signature bytea)
    RETURNS TABLE (o_outcome text, o_leaf_index bigint, o_expected bigint, o_user_id text,
                   o_sequence bigint, o_kind text, o_leaf_hash bytea)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        cur bigint;
        ex record;
    BEGIN
        PERFORM pg_advisory_xact_lock(6962);
        SELECT c.user_id, c.sequence, c.kind, c.leaf_index, l.leaf_hash INTO ex
          FROM changes c JOIN leaves l ON l.leaf_index = c.leaf_index
         WHERE c.proposal_id = p_proposal_id;
        IF FOUND THEN
            RETURN QUERY SELECT 'duplicate'::text, ex.leaf_index, NULL::bigint, ex.user_id,
                                ex.sequence, ex.kind, ex.leaf_hash;
            RETURN;
        END IF;
        IF EXISTS (SELECT 1 FROM failed_proposals f WHERE f.proposal_id = p_proposal_id) THEN
            RETURN QUERY SELECT 'failed'::text, NULL::bigint, NULL::bigint, p_user_id,
                                p_sequence, p_kind, NULL::bytea;
            RETURN;
        END IF;
        SELECT u.sequence INTO cur FROM users u WHERE u.user_id = p_user_id FOR UPDATE;
        IF COALESCE(cur, 0) + 1 <> p_sequence THEN
            RETURN QUERY SELECT 'sequence'::text, NULL::bigint, COALESCE(cur, 0) + 1, p_user_id,
                                p_sequence, p_kind, NULL::bytea;
            RETURN;
        END IF;
        INSERT INTO users (user_id, sequence, state, updated_ms)
             VALUES (p_user_id, p_sequence, p_state, p_committed_ms)
        ON CONFLICT (user_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state,
                 updated_ms = EXCLUDED.updated_ms;
        INSERT INTO leaves (leaf_index, leaf_hash, leaf_data)
             VALUES (p_leaf_index, p_leaf_hash, p_leaf_data);
        INSERT INTO changes (proposal_id, user_id, sequence, kind, leaf_index, committed_ms)
             VALUES (p_proposal_id, p_user_id, p_sequence, p_kind, p_leaf_index, p_committed_ms);
        INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)
             VALUES (p_leaf_index + 1, p_root, p_sth_ms, p_signature);
        RETURN QUERY SELECT 'committed'::text, p_leaf_index, NULL::bigint, p_user_id,
                            p_sequence, p_kind, p_leaf_hash;
    END
    $fn$;

    -- Under the commit lock: either the proposal committed first (answer 'committed'),
    -- or it is recorded failed (the first reason stays) and beco_commit refuses it.
    CREATE FUNCTION beco_fail(p_proposal_id text, p_code text, p_reason text, p_ms bigint)
    RETURNS text LANGUAGE plpgsql AS $fn$
    BEGIN
        PERFORM pg_advisory_xact_lock(6962);
        IF EXISTS (SELECT 1 FROM changes c WHERE c.proposal_id = p_proposal_id) THEN
            RETURN 'committed';
        END IF;
        INSERT INTO failed_proposals (proposal_id, code, reason, failed_ms)
             VALUES (p_proposal_id, p_code, p_reason, p_ms)
        ON CONFLICT (proposal_id) DO NOTHING;
        RETURN 'failed';
    END
    $fn$;
    """,
    # 3: failure records carry the request's signed time, and can be pruned by it
    """
    ALTER TABLE failed_proposals ADD COLUMN signed_ms bigint;
    CREATE INDEX failed_proposals_signed_ms ON failed_proposals (signed_ms);

    DROP FUNCTION beco_fail(text, text, text, bigint);
    CREATE FUNCTION beco_fail(
        p_proposal_id text, p_code text, p_reason text, p_ms bigint, p_signed_ms bigint)
    RETURNS text LANGUAGE plpgsql AS $fn$
    BEGIN
        PERFORM pg_advisory_xact_lock(6962);
        IF EXISTS (SELECT 1 FROM changes c WHERE c.proposal_id = p_proposal_id) THEN
            RETURN 'committed';
        END IF;
        INSERT INTO failed_proposals (proposal_id, code, reason, failed_ms, signed_ms)
             VALUES (p_proposal_id, p_code, p_reason, p_ms, p_signed_ms)
        ON CONFLICT (proposal_id) DO NOTHING;
        RETURN 'failed';
    END
    $fn$;

    -- Under the commit lock, at most p_limit rows a call (commits wait meanwhile).
    CREATE FUNCTION beco_prune_failures(p_signed_before bigint, p_limit integer)
    RETURNS bigint LANGUAGE plpgsql AS $fn$
    DECLARE
        n bigint;
    BEGIN
        PERFORM pg_advisory_xact_lock(6962);
        DELETE FROM failed_proposals WHERE proposal_id IN (
            SELECT f.proposal_id FROM failed_proposals f
             WHERE f.signed_ms < p_signed_before LIMIT p_limit);
        GET DIAGNOSTICS n = ROW_COUNT;
        RETURN n;
    END
    $fn$;
    """,
    # 4: a batch of commits in one statement with ONE signed tree head at its end size.
    # The heads of earlier (per-commit) logs stay: each is still a valid signed head.
    """
    DROP FUNCTION beco_commit(text, text, bigint, text, bytea, bigint, bytea, bytea, bigint,
                              bytea, bigint, bytea);

    -- Entries are parallel arrays (distinct users and proposal ids: the caller splits);
    -- entry i gets leaf p_first_leaf + i - 1, and the head covers them all. Returns one
    -- row per REFUSED entry (duplicate, failed, sequence) and then writes nothing; no
    -- rows means every entry committed.
    CREATE FUNCTION beco_commit_batch(
        p_ids text[], p_users text[], p_seqs bigint[], p_kinds text[], p_states bytea[],
        p_leaf_hashes bytea[], p_leaf_data bytea[], p_committed_ms bigint[],
        p_first_leaf bigint, p_root bytea, p_sth_ms bigint, p_signature bytea)
    RETURNS TABLE (o_ord integer, o_outcome text, o_leaf_index bigint, o_expected bigint,
                   o_user_id text, o_sequence bigint, o_kind text, o_leaf_hash bytea)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        n integer := cardinality(p_ids);
    BEGIN
        IF n = 0 OR cardinality(p_users) <> n OR cardinality(p_seqs) <> n
           OR cardinality(p_kinds) <> n OR cardinality(p_states) <> n
           OR cardinality(p_leaf_hashes) <> n OR cardinality(p_leaf_data) <> n
           OR cardinality(p_committed_ms) <> n THEN
            RAISE EXCEPTION 'beco_commit_batch: % entries but arrays of other lengths', n;
        END IF;
        PERFORM pg_advisory_xact_lock(6962);
        RETURN QUERY
        SELECT r.ord, r.outcome, r.leaf_index, r.expected, r.user_id, r.seq, r.kind, r.lh
          FROM (SELECT e.ord::integer AS ord,
                       CASE WHEN c.proposal_id IS NOT NULL THEN 'duplicate'
                            WHEN f.proposal_id IS NOT NULL THEN 'failed'
                            WHEN COALESCE(u.sequence, 0) + 1 <> e.seq THEN 'sequence'
                       END AS outcome,
                       c.leaf_index, COALESCE(u.sequence, 0) + 1 AS expected,
                       COALESCE(c.user_id, e.uid) AS user_id, COALESCE(c.sequence, e.seq) AS seq,
                       c.kind, l.leaf_hash AS lh
                  FROM unnest(p_ids, p_users, p_seqs) WITH ORDINALITY AS e(pid, uid, seq, ord)
                  LEFT JOIN changes c ON c.proposal_id = e.pid
                  LEFT JOIN leaves l ON l.leaf_index = c.leaf_index
                  LEFT JOIN failed_proposals f ON f.proposal_id = e.pid
                  LEFT JOIN users u ON u.user_id = e.uid) AS r
         WHERE r.outcome IS NOT NULL
         ORDER BY r.ord;
        IF FOUND THEN
            RETURN;
        END IF;
        INSERT INTO users (user_id, sequence, state, updated_ms)
             SELECT t.uid, t.seq, t.state, t.ms
               FROM unnest(p_users, p_seqs, p_states, p_committed_ms) AS t(uid, seq, state, ms)
        ON CONFLICT (user_id) DO UPDATE
             SET sequence = EXCLUDED.sequence, state = EXCLUDED.state,
                 updated_ms = EXCLUDED.updated_ms;
        INSERT INTO leaves (leaf_index, leaf_hash, leaf_data)
             SELECT p_first_leaf + t.ord - 1, t.lh, t.ld
               FROM unnest(p_leaf_hashes, p_leaf_data) WITH ORDINALITY AS t(lh, ld, ord);
        INSERT INTO changes (proposal_id, user_id, sequence, kind, leaf_index, committed_ms)
             SELECT t.pid, t.uid, t.seq, t.kind, p_first_leaf + t.ord - 1, t.ms
               FROM unnest(p_ids, p_users, p_seqs, p_kinds, p_committed_ms)
                    WITH ORDINALITY AS t(pid, uid, seq, kind, ms, ord);
        INSERT INTO tree_heads (tree_size, root_hash, timestamp_ms, signature)
             VALUES (p_first_leaf + n, p_root, p_sth_ms, p_signature);
    END
    $fn$;
    """,
    # 5: generic plans for the commit function's statements. Left to choose, PostgreSQL
    # re-plans them for every call (a 10-row estimate for an unnest makes the generic plan
    # look dearer than a custom one), and planning the refusal check's four-way join
    # costs more than running it: 1.7-2.0 ms a call against 1.1 ms here
    # (docs/benchmarks.md). The generic plans are index lookups per entry, like the
    # custom ones.
    """
    ALTER FUNCTION beco_commit_batch(text[], text[], bigint[], text[], bytea[], bytea[],
                                     bytea[], bigint[], bigint, bytea, bigint, bytea)
        SET plan_cache_mode = force_generic_plan;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
_MIGRATION_LOCK = 6963


async def migrate(conn: Any, upto: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations (each in its own transaction); returns the schema version.

    ``conn`` is an asyncpg connection. Safe to run concurrently: an advisory lock
    serialises migrators. A database newer than this code is refused. ``upto`` stops at
    an older version (tests write databases as earlier code did).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        current = await conn.fetchval("SELECT COALESCE(max(version), 0) FROM schema_version")
        if current > SCHEMA_VERSION:
            raise RuntimeError(
                f"database schema version {current} is newer than this code ({SCHEMA_VERSION})"
            )
        for version in range(current + 1, upto + 1):
            async with conn.transaction():
                await conn.execute(MIGRATIONS[version - 1])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
        return max(int(current), upto)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
