-- `syncd status` (syncd/cli/status.py): what the database knows, read-only; no broker is asked.

-- name: status_clock
-- The database's clock: every age `status` prints is measured against it.
SELECT now();

-- name: status_replicas
-- Every daemon instance that registered, the live ones (heartbeat not expired) first.
SELECT instance, started_at, heartbeat_at, expires_at, expires_at > now() AS live
  FROM replicas
 ORDER BY expires_at > now() DESC, heartbeat_at DESC;

-- name: status_accounts
-- One row per account named in $1 that has an `accounts` row: its state and counts.
-- Working orders are top-level orders not final; the outbox's queued counts 'submitting' too;
-- the stream's last event is the newest order_events row with source 'stream'.
SELECT a.id, a.name, a.broker, a.paper, a.active, a.last_synced_at, a.last_error,
       (SELECT count(*) FROM portfolio_positions p WHERE p.account_id = a.id) AS positions,
       s.equity, s.cash, s.taken_at AS balances_at,
       t.open_trades, t.floating_pnl,
       (SELECT count(*) FROM orders o
         WHERE o.account_id = a.id AND o.parent_id IS NULL
           AND o.status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding', 'partially_filled',
                            'pending_cancel', 'pending_replace', 'held', 'calculated')) AS working_orders,
       r.queued AS outbox_queued, r.failed AS outbox_failed, r.rejected AS outbox_rejected,
       (SELECT max(e.at) FROM order_events e JOIN orders o ON o.id = e.order_id
         WHERE o.account_id = a.id AND e.source = 'stream') AS stream_last_event_at,
       l.holder AS lease_holder, l.expires_at AS lease_expires_at,
       COALESCE(l.expires_at > now(), false) AS lease_live
  FROM accounts a
  LEFT JOIN LATERAL (
      SELECT equity, cash, taken_at FROM account_snapshots
       WHERE account_id = a.id ORDER BY taken_at DESC LIMIT 1) s ON true
  CROSS JOIN LATERAL (
      SELECT count(*) AS open_trades, sum(floating_pnl) AS floating_pnl FROM trades
       WHERE account_id = a.id AND status IN ('open', 'closing')) t
  CROSS JOIN LATERAL (
      SELECT count(*) FILTER (WHERE state IN ('queued', 'submitting')) AS queued,
             count(*) FILTER (WHERE state = 'failed') AS failed,
             count(*) FILTER (WHERE state = 'rejected') AS rejected
        FROM order_requests WHERE account_id = a.id) r
  LEFT JOIN account_leases l ON l.account_id = a.id
 WHERE a.name = ANY($1::text[])
 ORDER BY a.name;

-- name: status_account_tasks
-- Each task's last outcome for the accounts $1 (ids), from account_health.
SELECT account_id, task, last_ok_at, last_error_at, last_error, consecutive_failures
  FROM account_health
 WHERE account_id = ANY($1::bigint[])
 ORDER BY account_id, task;

-- name: status_open_trades
-- The open (and closing) trades of the accounts $1 (ids), oldest first.
SELECT id, account_id, symbol, strategy, status, quantity, entry_price, current_price, floating_pnl
  FROM trades
 WHERE account_id = ANY($1::bigint[]) AND status IN ('open', 'closing')
 ORDER BY account_id, id;
