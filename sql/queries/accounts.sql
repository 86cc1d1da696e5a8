-- name: upsert_accounts
-- Configured accounts by name; returns id and name. `active` is the user's and never touched.
INSERT INTO accounts (name, broker, broker_account_id, paper)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::boolean[])
ON CONFLICT (name) DO UPDATE
   SET broker = EXCLUDED.broker,
       broker_account_id = COALESCE(EXCLUDED.broker_account_id, accounts.broker_account_id),
       paper = EXCLUDED.paper,
       updated_at = now()
 WHERE (accounts.broker, accounts.paper) IS DISTINCT FROM (EXCLUDED.broker, EXCLUDED.paper)
    OR (EXCLUDED.broker_account_id IS NOT NULL
        AND accounts.broker_account_id IS DISTINCT FROM EXCLUDED.broker_account_id);

-- name: account_ids
SELECT id, name FROM accounts WHERE name = ANY($1::text[]);

-- name: active_account_names
-- Of the given names, those not paused by a user (accounts.active = false).
SELECT name FROM accounts WHERE active AND name = ANY($1::text[]);

-- name: record_passes
-- One pass of one task over many accounts: sync_runs rows, account_health, accounts.last_error.
-- $1 task, $2 instance, $3 account ids, $4 started_at, $5 finished_at, $6 ok, $7 error, $8 stats
WITH input AS (
    SELECT * FROM unnest($3::bigint[], $4::timestamptz[], $5::timestamptz[], $6::boolean[], $7::text[], $8::jsonb[])
        AS t(account_id, started_at, finished_at, ok, error, stats)
), runs AS (
    INSERT INTO sync_runs (task, account_id, instance, started_at, finished_at, ok, error, stats)
    SELECT $1, account_id, $2, started_at, finished_at, ok, error, stats FROM input
), health AS (
    INSERT INTO account_health AS h (task, account_id, last_ok_at, last_error_at, last_error, consecutive_failures)
    SELECT $1, account_id,
           CASE WHEN ok THEN finished_at END,
           CASE WHEN NOT ok THEN finished_at END,
           CASE WHEN NOT ok THEN error END,
           CASE WHEN ok THEN 0 ELSE 1 END
      FROM input
    ON CONFLICT (task, account_id) DO UPDATE
       SET last_ok_at = COALESCE(EXCLUDED.last_ok_at, h.last_ok_at),
           last_error_at = COALESCE(EXCLUDED.last_error_at, h.last_error_at),
           last_error = EXCLUDED.last_error,
           consecutive_failures = CASE WHEN EXCLUDED.last_ok_at IS NOT NULL THEN 0
                                       ELSE h.consecutive_failures + 1 END,
           updated_at = now()
)
UPDATE accounts a
   SET last_error = CASE WHEN i.ok THEN NULL ELSE $1 || ': ' || i.error END,
       updated_at = now()
  FROM input i
 WHERE a.id = i.account_id
   AND (NOT i.ok OR a.last_error LIKE $1 || ': %')
   AND a.last_error IS DISTINCT FROM CASE WHEN i.ok THEN NULL ELSE $1 || ': ' || i.error END;
