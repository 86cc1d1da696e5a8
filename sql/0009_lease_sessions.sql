-- Leases follow the holder's database session (issue 10, item 4).
--
-- Each replica keeps one dedicated connection for its leases and, on it, a
-- session-level advisory lock (class 0x6C656173 "leas", key = a fresh number from
-- replica_session_seq). Postgres releases that lock the moment the session ends,
-- and a SIGKILLed process's session ends as soon as the kernel closes its socket:
-- so a lease whose holder's lock is gone is free at once. A lease whose holder
-- session still looks alive (a network partition Postgres cannot see yet) stays
-- taken until its time-based expiry, as before.
--
-- replicas.session_lock / account_leases.holder_session: the holder's lock key
-- (NULL for rows written by a syncd without this migration: time decides for them).
-- backend_pid / backend_start: the lease session's backend (pg_stat_activity), for
-- operators.

ALTER TABLE replicas
    ADD COLUMN session_lock  integer,
    ADD COLUMN backend_pid   integer,
    ADD COLUMN backend_start timestamptz;

ALTER TABLE account_leases
    ADD COLUMN holder_session integer;

CREATE SEQUENCE replica_session_seq AS integer MINVALUE 1 MAXVALUE 2147483647 CYCLE;

-- The lock keys currently held by a live session in this database (read from the
-- lock manager, not from a snapshot: a session that just ended is already gone).
CREATE FUNCTION lease_live_sessions() RETURNS SETOF integer
LANGUAGE sql VOLATILE AS $$
    SELECT k.objid::integer
      FROM pg_catalog.pg_locks k
     WHERE k.locktype = 'advisory' AND k.granted AND k.objsubid = 2
       AND k.classid = 1818583411  -- 0x6C656173, "leas"
       AND k.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
$$;

-- Is the session holding lock key $1 alive? NULL when the key is unknown (NULL).
CREATE FUNCTION lease_session_alive(session integer) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN session IS NULL THEN NULL
                ELSE EXISTS (SELECT 1 FROM lease_live_sessions() s WHERE s = session) END
$$;

-- Who holds what, and whether Postgres still sees the holder (ops, tests).
-- valid: the lease protects its account (unexpired and its holder's session not
-- known to be gone).
CREATE VIEW v_account_leases AS
SELECT l.account_id, a.name, l.holder, l.holder_session, l.acquired_at, l.renewed_at, l.expires_at,
       lease_session_alive(l.holder_session) AS holder_alive,
       l.expires_at > now() AND lease_session_alive(l.holder_session) IS NOT FALSE AS valid
  FROM account_leases l
  JOIN accounts a ON a.id = l.account_id;
