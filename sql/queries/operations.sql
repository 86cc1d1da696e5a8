-- Operations: task health, replica leases, retention, health reads.

-- name: task_loop_started
-- A task loop of this instance (re)starts: $1 instance, $2 task.
INSERT INTO task_health AS h (instance, task, started_at, updated_at)
VALUES ($1, $2, now(), now())
ON CONFLICT (instance, task) DO UPDATE
   SET started_at = now(), updated_at = now();

-- name: task_pass_started
-- $1 instance, $2 task, $3 the task's current interval in seconds.
INSERT INTO task_health AS h (instance, task, started_at, last_started_at, interval_s)
VALUES ($1, $2, now(), now(), $3)
ON CONFLICT (instance, task) DO UPDATE
   SET last_started_at = now(), interval_s = EXCLUDED.interval_s, updated_at = now();

-- name: task_pass_finished
-- The task completed a pass: $1 instance, $2 task, $3 finished at, $4 accounts, $5 of them failed.
INSERT INTO task_health AS h (instance, task, started_at, last_ok_at, accounts_total, accounts_failed)
VALUES ($1, $2, $3, $3, $4, $5)
ON CONFLICT (instance, task) DO UPDATE
   SET last_ok_at = EXCLUDED.last_ok_at,
       last_error = NULL,
       consecutive_failures = 0,
       accounts_total = EXCLUDED.accounts_total,
       accounts_failed = EXCLUDED.accounts_failed,
       updated_at = now();

-- name: task_failed
-- The task loop itself failed (not one account): $1 instance, $2 task, $3 error.
INSERT INTO task_health AS h (instance, task, started_at, last_error_at, last_error, consecutive_failures)
VALUES ($1, $2, now(), now(), $3, 1)
ON CONFLICT (instance, task) DO UPDATE
   SET last_error_at = now(),
       last_error = EXCLUDED.last_error,
       consecutive_failures = h.consecutive_failures + 1,
       updated_at = now();

-- name: health_tasks
-- task_health rows of one instance ($1), or of every instance when $1 is null; newest first per task.
SELECT instance, task, started_at, last_started_at, last_ok_at, last_error_at, last_error,
       consecutive_failures, interval_s, accounts_total, accounts_failed, updated_at
  FROM task_health
 WHERE $1::text IS NULL OR instance = $1
 ORDER BY task, greatest(last_ok_at, started_at) DESC NULLS LAST;

-- name: db_now
SELECT now();

-- name: health_accounts
-- Per task and account, the last outcome (whichever replica ran it), for active accounts among $1 names.
SELECT a.name, h.task, h.last_ok_at, h.last_error_at, h.last_error, h.consecutive_failures
  FROM accounts a
  JOIN account_health h ON h.account_id = a.id
 WHERE a.active AND a.name = ANY($1::text[]);

-- name: active_accounts_named
-- Of the given names, the active ones (accounts with no health rows yet still count).
SELECT name FROM accounts WHERE active AND name = ANY($1::text[]) ORDER BY name;

-- name: schema_versions
-- Every applied migration version (readiness: none of the shipped files may be missing).
SELECT version FROM schema_migrations ORDER BY version;

-- name: replica_session_open
-- A new lease connection: take a fresh session advisory lock (class 0x6C656173, see
-- 0009_lease_sessions.sql) on it. Returns the lock key, or no row if that key was taken.
SELECT s.n AS session_lock
  FROM (SELECT nextval('replica_session_seq')::integer AS n) s
 WHERE pg_try_advisory_lock(1818583411, s.n);

-- name: replica_heartbeat
-- Register or renew this replica: $1 instance, $2 TTL seconds, $3 its session lock key,
-- $4 its health listener's URL (NULL: none).
-- The row is taken over from an earlier holder of the instance name only when that
-- holder's session is gone (or its row lapsed): two live processes never share a name.
-- Returns registered (false: the name is in use by a live session) and how many
-- replicas are live (unexpired, and their session not known to be gone).
WITH live AS MATERIALIZED (SELECT s FROM lease_live_sessions() s),
me AS (
    INSERT INTO replicas AS r (instance, expires_at, session_lock, backend_pid, backend_start, health_url)
    VALUES ($1, now() + make_interval(secs => $2), $3, pg_backend_pid(),
            (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()), $4)
    ON CONFLICT (instance) DO UPDATE
       SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at,
           started_at = CASE WHEN r.session_lock IS DISTINCT FROM EXCLUDED.session_lock
                             THEN now() ELSE r.started_at END,
           session_lock = EXCLUDED.session_lock,
           backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start,
           health_url = EXCLUDED.health_url
     WHERE r.session_lock IS NULL OR r.session_lock = EXCLUDED.session_lock OR r.expires_at <= now()
        OR NOT lease_session_alive(r.session_lock)
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM me) AS registered,
       1 + count(*) AS live
  FROM replicas r
 WHERE r.instance <> $1 AND r.expires_at > now()
   AND (r.session_lock IS NULL OR r.session_lock IN (SELECT s FROM live));

-- name: replica_remove
-- A clean shutdown: forget this replica and give its leases back at once. $1 instance.
WITH gone AS (DELETE FROM account_leases WHERE holder = $1)
DELETE FROM replicas WHERE instance = $1;

-- name: lease_renew
-- Extend this replica's unexpired leases on active accounts among $3 ids: $1 instance, $2 TTL
-- seconds, $4 its session lock key (recorded: the lease now lives and dies with that session).
-- Returns the account ids still held. A lease that lapsed or was taken over is not renewed.
UPDATE account_leases l
   SET renewed_at = now(), expires_at = now() + make_interval(secs => $2), holder_session = $4
  FROM accounts a
 WHERE l.holder = $1 AND l.expires_at > now()
   AND a.id = l.account_id AND a.active AND a.id = ANY($3::bigint[])
RETURNING l.account_id;

-- name: lease_release
-- Give up leases: $1 instance, $2 account ids.
DELETE FROM account_leases WHERE holder = $1 AND account_id = ANY($2::bigint[]);

-- name: lease_release_unwanted
-- Leases this replica holds on accounts that are paused or not among $2 ids: $1 instance.
DELETE FROM account_leases l
 USING accounts a
 WHERE l.holder = $1 AND a.id = l.account_id
   AND (NOT a.active OR NOT (a.id = ANY($2::bigint[])));

-- name: lease_count_candidates
-- Active accounts among $1 ids (the work the live replicas share).
SELECT count(*) FROM accounts WHERE active AND id = ANY($1::bigint[]);

-- name: lease_acquire
-- Take up to $3 free leases among active accounts in $2 ids: $1 instance, $4 TTL seconds,
-- $5 this replica's session lock key. Free: no lease, a lapsed one, or one whose holder's
-- session is gone (Postgres released its lock: the holder died or lost its connection).
-- Two replicas racing for one account: the insert's conflict check, re-evaluated on the
-- latest row with a fresh look at the lock manager, lets exactly one win.
WITH live AS MATERIALIZED (SELECT s FROM lease_live_sessions() s),
free AS (
    SELECT a.id
      FROM accounts a
      LEFT JOIN account_leases l ON l.account_id = a.id
     WHERE a.active AND a.id = ANY($2::bigint[])
       AND (l.account_id IS NULL OR l.expires_at <= now()
            OR (l.holder_session IS NOT NULL AND l.holder_session NOT IN (SELECT s FROM live)))
     ORDER BY a.id
     LIMIT $3
)
INSERT INTO account_leases AS l (account_id, holder, holder_session, expires_at)
SELECT id, $1, $5, now() + make_interval(secs => $4) FROM free
ON CONFLICT (account_id) DO UPDATE
   SET holder = EXCLUDED.holder, holder_session = EXCLUDED.holder_session,
       acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
 WHERE l.expires_at <= now() OR NOT lease_session_alive(l.holder_session)
RETURNING account_id;

-- name: lease_probe
-- Between heartbeats (read only): is there anything to take? $1 instance, $2 account ids.
-- Returns the live replicas (as replica_heartbeat counts them), the active accounts among
-- $2 and how many of them are free (as lease_acquire sees them).
WITH live AS MATERIALIZED (SELECT s FROM lease_live_sessions() s)
SELECT (SELECT 1 + count(*) FROM replicas r
         WHERE r.instance <> $1 AND r.expires_at > now()
           AND (r.session_lock IS NULL OR r.session_lock IN (SELECT s FROM live))) AS live,
       count(*) AS candidates,
       count(*) FILTER (WHERE l.account_id IS NULL OR l.expires_at <= now()
                           OR (l.holder_session IS NOT NULL
                               AND l.holder_session NOT IN (SELECT s FROM live))) AS free
  FROM accounts a
  LEFT JOIN account_leases l ON l.account_id = a.id
 WHERE a.active AND a.id = ANY($2::bigint[]);

-- name: replicas_purge
-- Replicas whose heartbeat lapsed more than $1 seconds ago, and their leases.
WITH dead AS (
    DELETE FROM replicas WHERE expires_at < now() - make_interval(secs => $1) RETURNING instance
)
DELETE FROM account_leases WHERE holder IN (SELECT instance FROM dead) AND expires_at <= now();

-- name: trade_input_changes_purge
-- Housekeeping: changes noted more than $1 seconds ago (0021), deleted and, in the same
-- statement, added to their accounts' trade_input_purged totals (locked in account order), so
-- what monitorCycle compares is unchanged by the purge. Returns how many went.
WITH doomed AS (
    SELECT account_id, xid FROM trade_input_changes
     WHERE at < now() - make_interval(secs => $1)
     ORDER BY account_id, xid
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM trade_input_changes c USING doomed d
     WHERE c.account_id = d.account_id AND c.xid = d.xid
    RETURNING c.account_id, c.xid
), added AS (
    INSERT INTO trade_input_purged AS p (account_id, n, h)
    SELECT account_id, count(*), sum(hashtextextended(xid::text, 0)) FROM gone GROUP BY account_id ORDER BY account_id
    ON CONFLICT (account_id) DO UPDATE SET n = p.n + EXCLUDED.n, h = p.h + EXCLUDED.h
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: sync_runs_purge_batch
-- Retention: delete at most $2 sync_runs rows older than $1 days; returns how many went.
WITH doomed AS (
    SELECT id FROM sync_runs
     WHERE started_at < now() - make_interval(days => $1)
     ORDER BY id
     LIMIT $2
       FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM sync_runs s USING doomed d WHERE s.id = d.id RETURNING 1
)
SELECT count(*) FROM gone;

-- name: task_health_purge
-- Retention: task_health rows of instances not heard from in $1 days.
DELETE FROM task_health WHERE updated_at < now() - make_interval(days => $1);

-- name: positions_per_account
-- For the syncd_positions gauge: positions mirrored per account among $1 names.
SELECT a.name, count(p.symbol) AS n
  FROM accounts a LEFT JOIN portfolio_positions p ON p.account_id = a.id
 WHERE a.name = ANY($1::text[])
 GROUP BY a.name;

-- name: outbox_waiting_per_account
-- For the syncd_outbox_waiting and syncd_outbox_oldest_waiting_seconds gauges: requests queued or
-- submitting per account among $1 names, and the age of the oldest (0 when none waits).
SELECT a.name, count(r.id) AS waiting,
       coalesce(extract(epoch FROM now() - min(r.created_at)), 0)::float8 AS oldest_s
  FROM accounts a LEFT JOIN order_requests r ON r.account_id = a.id AND r.state IN ('queued', 'submitting')
 WHERE a.name = ANY($1::text[])
 GROUP BY a.name;

-- name: health_replicas
-- `syncd health` without --url: every registered daemon instance, the live ones (unexpired,
-- their lease session alive) first, newest heartbeat first, with where its listener listens.
WITH live AS MATERIALIZED (SELECT s FROM lease_live_sessions() s)
SELECT instance, health_url, heartbeat_at,
       (expires_at > now() AND (session_lock IS NULL OR session_lock IN (SELECT s FROM live))) AS live
  FROM replicas
 ORDER BY 4 DESC, heartbeat_at DESC;

-- name: health_last_seen
-- When any daemon last showed a sign of life in this database: its newest heartbeat, or the
-- newest task_health write (a cleanly stopped daemon removes its replicas row).
SELECT greatest((SELECT max(heartbeat_at) FROM replicas),
                (SELECT max(updated_at) FROM task_health)) AS last_seen;
