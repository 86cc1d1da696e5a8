-- name: upsert_accounts
-- Configured accounts by name: $1 account_row[] (0013). `active` is the user's and never touched.
INSERT INTO accounts (name, broker, broker_account_id, paper)
SELECT u.name, u.broker, u.broker_account_id, u.paper FROM unnest($1::account_row[]) AS u
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
-- $1 task, $2 instance, $3 pass_row[] (0013): account_id, started_at, finished_at, ok, error, stats (JSON text)
WITH input AS (
    SELECT u.account_id, u.started_at, u.finished_at, u.ok, u.error, u.stats::jsonb AS stats
      FROM unnest($3::pass_row[]) AS u
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
