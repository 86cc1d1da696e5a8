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

-- name: replica_heartbeat
-- Register or renew this replica: $1 instance, $2 TTL seconds. Returns how many replicas are live.
WITH me AS (
    INSERT INTO replicas AS r (instance, expires_at)
    VALUES ($1, now() + make_interval(secs => $2))
    ON CONFLICT (instance) DO UPDATE
       SET heartbeat_at = now(), expires_at = EXCLUDED.expires_at
)
SELECT 1 + count(*) FROM replicas WHERE instance <> $1 AND expires_at > now();

-- name: replica_remove
-- A clean shutdown: forget this replica and give its leases back at once. $1 instance.
WITH gone AS (DELETE FROM account_leases WHERE holder = $1)
DELETE FROM replicas WHERE instance = $1;

-- name: lease_renew
-- Extend this replica's unexpired leases on active accounts among $3 ids: $1 instance, $2 TTL seconds.
-- Returns the account ids still held. A lease that lapsed (and may be someone else's now) is not renewed.
UPDATE account_leases l
   SET renewed_at = now(), expires_at = now() + make_interval(secs => $2)
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
-- Take up to $3 free or lapsed leases among active accounts in $2 ids: $1 instance, $4 TTL seconds.
-- Two replicas racing for one account: the insert's conflict check lets exactly one win.
WITH free AS (
    SELECT a.id
      FROM accounts a
      LEFT JOIN account_leases l ON l.account_id = a.id
     WHERE a.active AND a.id = ANY($2::bigint[])
       AND (l.account_id IS NULL OR l.expires_at <= now())
     ORDER BY a.id
     LIMIT $3
)
INSERT INTO account_leases AS l (account_id, holder, expires_at)
SELECT id, $1, now() + make_interval(secs => $4) FROM free
ON CONFLICT (account_id) DO UPDATE
   SET holder = EXCLUDED.holder, acquired_at = now(), renewed_at = now(), expires_at = EXCLUDED.expires_at
 WHERE l.expires_at <= now()
RETURNING account_id;

-- name: leases_of
-- Who holds what (ops, tests): every lease with its account name.
SELECT a.name, l.holder, l.acquired_at, l.renewed_at, l.expires_at, l.expires_at > now() AS valid
  FROM account_leases l JOIN accounts a ON a.id = l.account_id
 ORDER BY a.name;

-- name: replicas_purge
-- Replicas whose heartbeat lapsed more than $1 seconds ago, and their leases.
WITH dead AS (
    DELETE FROM replicas WHERE expires_at < now() - make_interval(secs => $1) RETURNING instance
)
DELETE FROM account_leases WHERE holder IN (SELECT instance FROM dead) AND expires_at <= now();

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
