-- name: trade_orders_lock
-- Serialises every writer of one account's orders and trades (the poll pass, the stream
-- consumer, the outbox), whichever replica runs it. Held until the transaction ends.
-- $1 lock class (syncd.db.locks.LockClass.ORDERS), $2 account id.
SELECT pg_advisory_xact_lock($1::int, ($2::bigint % 2147483647)::int);

-- name: trade_outbox_try_lock
-- One drainer of an account's outbox at a time (session lock, released by trade_outbox_unlock
-- or when the connection closes). $1 lock class, $2 account id. Returns true when acquired.
SELECT pg_try_advisory_lock($1::int, ($2::bigint % 2147483647)::int) AS locked;

-- name: trade_outbox_unlock
SELECT pg_advisory_unlock($1::int, ($2::bigint % 2147483647)::int);

-- name: trade_watermark
-- What a tradeCycle pass starts from, in one statement, for each of several accounts at once
-- (syncd.db.grouped: the passes asking meanwhile), in the order given (``ord``). $1 account ids
-- (bigint[]), $2 how long an order recorded terminal is asked for again, $3 the pending
-- close_reasons (text[]).
-- ``watermark``: the order mirror's (NULL before the first pass); ``oldest_working``: the oldest
-- submission time of an order still recorded as working (a bracket/OCO/OTO order counts as working
-- while one of its legs works: a filled entry's exits); ``working``: broker ids of the account's
-- top-level orders recorded as working, of those recorded terminal within the last $2 (asked
-- again, so a wrong final answer is corrected by the next truthful one; see
-- syncd.trading.reconcile.merge_order), and of a bracket/OCO/OTO order whose entry ended while
-- its exits still work (0017). Uses orders_working and orders_recent (0011). ``expiry``: whether
-- expiry settlement has a trade to look at (as account_sync_unchanged's).
WITH ask AS (
    SELECT t.id, t.ord FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, ord)
)
SELECT ask.ord,
       (SELECT orders_watermark FROM trade_cycle_state WHERE account_id = ask.id) AS watermark,
       LEAST((SELECT min(submitted_at) FROM orders
               WHERE account_id = ask.id AND parent_id IS NULL
                 AND order_is_working(status)),
             (SELECT min(p.submitted_at) FROM orders c JOIN orders p ON p.id = c.parent_id
               WHERE c.account_id = ask.id AND order_is_working(c.status)
                 AND p.order_class IN ('bracket', 'oco', 'oto'))) AS oldest_working,
       ARRAY(SELECT broker_order_id
               FROM orders
              WHERE account_id = ask.id AND parent_id IS NULL
                AND order_is_working(status)
             UNION
             SELECT broker_order_id
               FROM orders
              WHERE account_id = ask.id AND parent_id IS NULL
                AND updated_at > now() - $2::interval
             UNION
             SELECT p.broker_order_id
               FROM orders c JOIN orders p ON p.id = c.parent_id
              WHERE c.account_id = ask.id AND order_is_working(c.status)
                AND p.order_class IN ('bracket', 'oco', 'oto')) AS working,
       EXISTS (SELECT 1 FROM expiry_candidate_trades(ask.id, $3::text[])) AS expiry
  FROM ask
 ORDER BY ask.ord;

-- name: trade_set_watermark
-- Move the watermark to $2 when it is unset or older than $3 (so an idle pass mostly writes nothing;
-- a pass that read a watermark newer than that does not send it: tradeCycle.watermark_due).
INSERT INTO trade_cycle_state AS s (account_id, orders_watermark)
VALUES ($1, $2)
ON CONFLICT (account_id) DO UPDATE
   SET orders_watermark = EXCLUDED.orders_watermark, updated_at = now()
 WHERE s.orders_watermark IS NULL OR s.orders_watermark < EXCLUDED.orders_watermark - $3::interval;

-- name: trade_stored_orders
-- The stored state of the given top-level orders and of their legs (rows with parent_id).
-- $1 account id, $2 broker order ids.
WITH top AS (
    SELECT id FROM orders WHERE account_id = $1 AND broker_order_id = ANY($2::text[]) AND parent_id IS NULL
)
SELECT o.id, o.parent_id, o.broker_order_id, o.client_order_id, o.trade_id, o.role, o.symbol, o.side,
       o.status, o.qty, o.ratio_qty, o.filled_qty, o.filled_avg_price, o.reject_reason, o.filled_at,
       o.canceled_at, o.order_class, o.limit_price, o.stop_price
  FROM orders o
 WHERE o.id IN (SELECT id FROM top) OR o.parent_id IN (SELECT id FROM top)
 ORDER BY o.parent_id NULLS FIRST, o.id;

-- name: trade_requests_by_client_ids
-- Outbox requests that placed orders with these client ids: which trade, opening or closing.
SELECT client_order_id, trade_id, kind
  FROM order_requests
 WHERE account_id = $1 AND client_order_id = ANY($2::text[]) AND kind IN ('open', 'close');

-- name: trade_upsert_orders
-- Insert or update top-level orders and their legs in one statement; returns the top-level ids.
-- $1 account id
-- $2 top-level rows (order_row[], 0012: by attribute name)
-- $3 leg rows (order_leg_row[]): the same columns without trade_id/role, with the parent's broker id
WITH top AS (
    INSERT INTO orders AS o
           (account_id, broker_order_id, client_order_id, trade_id, role, symbol, asset_class, side, intent,
            type, order_class, time_in_force, qty, ratio_qty, filled_qty, filled_avg_price, limit_price,
            status, reject_reason, submitted_at, filled_at, canceled_at, notional, stop_price, replaces, replaced_by)
    SELECT $1, u.broker_order_id, u.client_order_id, u.trade_id, u.role, u.symbol, u.asset_class, u.side,
           u.intent, u.type, u.order_class, u.time_in_force, u.qty, u.ratio_qty, u.filled_qty,
           u.filled_avg_price, u.limit_price, u.status, u.reject_reason, u.submitted_at, u.filled_at,
           u.canceled_at, u.notional, u.stop_price, u.replaces, u.replaced_by
      FROM unnest($2::order_row[]) AS u
    ON CONFLICT (account_id, broker_order_id) DO UPDATE
       SET client_order_id = COALESCE(o.client_order_id, EXCLUDED.client_order_id),
           trade_id = COALESCE(o.trade_id, EXCLUDED.trade_id),
           role = COALESCE(o.role, EXCLUDED.role),
           symbol = EXCLUDED.symbol,
           asset_class = EXCLUDED.asset_class,
           side = EXCLUDED.side,
           intent = COALESCE(EXCLUDED.intent, o.intent),
           type = EXCLUDED.type,
           order_class = EXCLUDED.order_class,
           time_in_force = EXCLUDED.time_in_force,
           qty = EXCLUDED.qty,
           ratio_qty = EXCLUDED.ratio_qty,
           filled_qty = EXCLUDED.filled_qty,
           filled_avg_price = EXCLUDED.filled_avg_price,
           limit_price = EXCLUDED.limit_price,
           status = EXCLUDED.status,
           reject_reason = EXCLUDED.reject_reason,
           submitted_at = COALESCE(EXCLUDED.submitted_at, o.submitted_at),
           filled_at = EXCLUDED.filled_at,
           canceled_at = EXCLUDED.canceled_at,
           notional = EXCLUDED.notional,
           stop_price = EXCLUDED.stop_price,
           replaces = COALESCE(EXCLUDED.replaces, o.replaces),
           replaced_by = COALESCE(EXCLUDED.replaced_by, o.replaced_by),
           updated_at = now()
    RETURNING o.id, o.broker_order_id
), legs AS (
    INSERT INTO orders AS o
           (account_id, parent_id, trade_id, role, broker_order_id, client_order_id, symbol, asset_class, side,
            intent, type, order_class, time_in_force, qty, ratio_qty, filled_qty, filled_avg_price,
            limit_price, status, reject_reason, submitted_at, filled_at, canceled_at, notional, stop_price)
    SELECT $1, top.id, NULL, NULL, l.broker_order_id, l.client_order_id, l.symbol, l.asset_class, l.side,
           l.intent, l.type, l.order_class, l.time_in_force, l.qty, l.ratio_qty, l.filled_qty,
           l.filled_avg_price, l.limit_price, l.status, l.reject_reason, l.submitted_at, l.filled_at,
           l.canceled_at, l.notional, l.stop_price
      FROM unnest($3::order_leg_row[]) WITH ORDINALITY AS l
      JOIN top ON top.broker_order_id = l.parent_broker_order_id
     ORDER BY l.ordinality  -- new legs get their ids in the broker's order of them, whatever the join's plan
    ON CONFLICT (account_id, broker_order_id) DO UPDATE
       SET parent_id = EXCLUDED.parent_id,
           symbol = EXCLUDED.symbol,
           side = EXCLUDED.side,
           intent = COALESCE(EXCLUDED.intent, o.intent),
           qty = EXCLUDED.qty,
           ratio_qty = EXCLUDED.ratio_qty,
           filled_qty = EXCLUDED.filled_qty,
           filled_avg_price = EXCLUDED.filled_avg_price,
           limit_price = EXCLUDED.limit_price,
           stop_price = EXCLUDED.stop_price,
           type = EXCLUDED.type,
           status = EXCLUDED.status,
           filled_at = EXCLUDED.filled_at,
           canceled_at = EXCLUDED.canceled_at,
           updated_at = now()
    RETURNING 1
)
SELECT id, broker_order_id, (SELECT count(*) FROM legs) AS legs_written FROM top;

-- name: trade_insert_order_events
-- One row per observed change; a stream fill seen twice (same execution id) is kept once.
-- $1 rows (order_event_row[], 0012: by attribute name)
INSERT INTO order_events (order_id, event, qty, price, filled_qty, status, execution_id, at, source)
SELECT e.order_id, e.event, e.qty, e.price, e.filled_qty, e.status, e.execution_id, e.at, e.source
  FROM unnest($1::order_event_row[]) AS e
ON CONFLICT (order_id, execution_id) WHERE execution_id IS NOT NULL DO NOTHING;

-- name: trade_trades_for_apply
-- The trades to re-derive, locked for this transaction; exit_pending: a close request is
-- queued or being placed (monitorCycle sets a trade `closing` when it queues its exit).
SELECT t.id, t.status, t.quantity, t.entry_price, t.broker_fill_price, t.exit_price, t.realized_pnl,
       t.close_reason, t.opened_at, t.closed_at,
       EXISTS (SELECT 1 FROM order_requests r
                WHERE r.trade_id = t.id AND r.kind = 'close' AND r.state IN ('queued', 'submitting')) AS exit_pending
  FROM trades t
 WHERE t.id = ANY($1::bigint[])
 ORDER BY t.id
   FOR UPDATE OF t;

-- name: trade_legs_of
SELECT trade_id, leg_index, symbol, side, ratio
  FROM trade_legs
 WHERE trade_id = ANY($1::bigint[])
 ORDER BY trade_id, leg_index;

-- name: trade_orders_of
-- Every order linked to the given trades (top level, oldest first) and their legs.
WITH top AS (
    SELECT id FROM orders WHERE trade_id = ANY($1::bigint[]) AND parent_id IS NULL
)
SELECT o.id, o.parent_id, o.broker_order_id, o.client_order_id, o.trade_id, o.role, o.symbol, o.side,
       o.status, o.qty, o.ratio_qty, o.filled_qty, o.filled_avg_price, o.reject_reason, o.filled_at,
       o.canceled_at, o.order_class
  FROM orders o
 WHERE o.id IN (SELECT id FROM top) OR o.parent_id IN (SELECT id FROM top)
 ORDER BY o.parent_id NULLS FIRST, COALESCE(o.submitted_at, o.created_at), o.id;

-- name: trade_update_trades
-- Write re-derived trades (only those that changed are passed). $1 rows (trade_row[], 0012: by name).
UPDATE trades t
   SET status = u.status,
       quantity = u.quantity,
       entry_price = u.entry_price,
       broker_fill_price = u.broker_fill_price,
       exit_price = u.exit_price,
       realized_pnl = u.realized_pnl,
       close_reason = u.close_reason,
       opened_at = u.opened_at,
       closed_at = u.closed_at,
       updated_at = now()
  FROM unnest($1::trade_row[]) AS u
 WHERE t.id = u.id;

-- name: trade_reconcile_candidates
-- Open trades whose quantity may be set from the broker's positions: nothing of theirs is
-- working or queued, and the positions were synced after their last fill (with a margin).
-- Returns each trade's legs with the account's position, how many live trades claim it, and
-- whether the trade has a fill record (an entry order linked to it: then it is only capped).
-- A trade an app wrote without trade_legs rows is its one leg on its symbol, as
-- v_live_trade_legs reads it (has_legs false), and it claims that symbol for the others.
-- $1 account id, $2 margin (interval)
WITH cand AS (
    SELECT t.id, t.quantity, t.symbol, t.strategy
      FROM trades t
      JOIN accounts a ON a.id = t.account_id
     WHERE t.account_id = $1 AND t.status = 'open'
       AND a.last_synced_at IS NOT NULL
       AND NOT EXISTS (
             SELECT 1 FROM orders o
              WHERE o.trade_id = t.id AND o.parent_id IS NULL
                AND (order_is_working(o.status)
                     OR COALESCE(o.filled_at, o.updated_at) > a.last_synced_at - $2::interval))
       AND NOT EXISTS (
             SELECT 1 FROM order_requests r
              WHERE r.trade_id = t.id AND r.state IN ('queued', 'submitting'))
), live AS (
    SELECT t.id AS trade_id, COALESCE(l.symbol, t.symbol) AS symbol
      FROM trades t
      LEFT JOIN trade_legs l ON l.trade_id = t.id
     WHERE t.account_id = $1 AND t.status IN ('pending', 'open', 'closing')
), claims AS (
    SELECT symbol, count(DISTINCT trade_id) AS n FROM live GROUP BY symbol
), legs AS (
    SELECT l.trade_id, l.leg_index, l.symbol, l.side, l.ratio, true AS has_legs
      FROM trade_legs l
     WHERE l.trade_id IN (SELECT id FROM cand)
    UNION ALL
    SELECT c.id, 0, c.symbol, CASE WHEN upper(c.strategy) LIKE 'SHORT%' THEN 'sell' ELSE 'buy' END, 1, false
      FROM cand c
     WHERE NOT EXISTS (SELECT 1 FROM trade_legs l WHERE l.trade_id = c.id)
)
SELECT c.id AS trade_id, c.quantity, l.leg_index, l.symbol, l.side, l.ratio, l.has_legs,
       COALESCE(p.quantity, 0) AS position_quantity, COALESCE(cl.n, 0) AS claims,
       trade_has_own_fills(c.id) AS own_fills
  FROM cand c
  JOIN legs l ON l.trade_id = c.id
  LEFT JOIN portfolio_positions p ON p.account_id = $1 AND p.symbol = l.symbol
  LEFT JOIN claims cl ON cl.symbol = l.symbol
 ORDER BY c.id, l.leg_index;

-- name: trade_set_quantities
-- Quantities reconciled with the broker's positions. $1 trade_quantity_row[] (0013): id, quantity.
UPDATE trades t
   SET quantity = u.quantity, updated_at = now()
  FROM unnest($1::trade_quantity_row[]) AS u
 WHERE t.id = u.id AND t.quantity IS DISTINCT FROM u.quantity;

-- name: trade_close_outside
-- Open trades whose every leg is flat at the broker (closed by hand, assigned, liquidated):
-- closed with the reason; the exit price and realized P&L are unknown to syncd and stay NULL.
-- $1 trade ids, $2 close_reason
UPDATE trades
   SET status = 'closed', quantity = 0, close_reason = $2, closed_at = now(), updated_at = now()
 WHERE id = ANY($1::bigint[]) AND status = 'open';

-- name: trade_notify
-- NOTIFY syncd_events, one small JSON payload each.
SELECT pg_notify('syncd_events', p) FROM unnest($1::text[]) AS p;

-- name: outbox_has_work
SELECT EXISTS (SELECT 1 FROM order_requests WHERE account_id = $1 AND state IN ('queued', 'submitting'));

-- name: outbox_pending
-- The account's requests still to work on, oldest first.
SELECT id FROM order_requests
 WHERE account_id = $1 AND state IN ('queued', 'submitting')
 ORDER BY id;

-- name: outbox_claim
-- Claim one request for this transaction; skipped when another worker holds it. The payload
-- comes as text: syncd reads it with its own bounds (outbox.read_payload), never the pool's codec,
-- so a payload Python cannot decode fails its request alone.
SELECT id, account_id, kind, trade_id, payload::text AS payload, client_order_id, state, attempts, last_error, broker_order_id
  FROM order_requests
 WHERE id = $1 AND state IN ('queued', 'submitting')
   FOR UPDATE SKIP LOCKED;

-- name: outbox_set_client_id
UPDATE order_requests SET client_order_id = $2, updated_at = now() WHERE id = $1;

-- name: outbox_set_trade
UPDATE order_requests SET trade_id = $2, updated_at = now() WHERE id = $1;

-- name: outbox_mark_submitting
-- Committed before the broker is called: from here on the outcome may be unknown.
UPDATE order_requests
   SET state = 'submitting', attempts = attempts + 1, trade_id = COALESCE($2, trade_id), updated_at = now()
 WHERE id = $1
RETURNING attempts;

-- name: outbox_mark_submitted
UPDATE order_requests
   SET state = 'submitted', broker_order_id = $2, submitted_at = COALESCE(submitted_at, now()),
       last_error = NULL, updated_at = now()
 WHERE id = $1;

-- name: outbox_mark_final
-- The request ends without an order: 'rejected' (the broker refused) or 'failed' (syncd could not place it).
UPDATE order_requests
   SET state = $2, last_error = $3, updated_at = now()
 WHERE id = $1;

-- name: outbox_note_error
-- The outcome is still unknown: keep the state, say why.
UPDATE order_requests SET last_error = $2, updated_at = now() WHERE id = $1;

-- name: outbox_create_trade
INSERT INTO trades (account_id, symbol, strategy, status, requested_quantity, quantity, take_profit_pct,
                    stop_loss_pct, source)
VALUES ($1, $2, $3, 'pending', $4, 0, $5, $6, 'order')
RETURNING id;

-- name: outbox_insert_legs
-- $1 trade id, $2 trade_leg_row[] (0013): leg_index, symbol, side, ratio.
INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio)
SELECT $1, u.leg_index, u.symbol, u.side, u.ratio FROM unnest($2::trade_leg_row[]) AS u;

-- name: outbox_trade
-- The trade a close/cancel request names, with its account (must be the request's).
SELECT id, account_id, status, quantity FROM trades WHERE id = $1;

-- name: outbox_close_inputs
-- Per leg of a live trade ($1, in account $2): the position held, and what working closing
-- orders already hold of it (v_closing_order_holds, all trades': the same definition
-- monitorCycle and v_trade_monitor read). A trade without trade_legs rows is its one leg
-- (v_live_trade_legs). No rows when the trade is neither open nor closing.
-- `available` is the view's available_leg_quantity: what this trade may close of the leg, so
-- when several trades share a symbol one trade's close never takes another's share.
SELECT v.leg_index, v.symbol, v.side, v.ratio,
       COALESCE(v.position_quantity, 0) AS position_quantity,
       v.committed_quantity AS committed,
       v.available_leg_quantity AS available
  FROM v_trade_leg_positions v
 WHERE v.trade_id = $1 AND v.account_id = $2
 ORDER BY v.leg_index;

-- name: outbox_set_close_reason
UPDATE trades SET close_reason = $2, updated_at = now() WHERE id = $1 AND close_reason IS DISTINCT FROM $2;

-- name: outbox_reopen_trade
-- A close request ended without an order: a trade left `closing` with no working exit is open again.
-- $1 trade id, $2 the request's account (a trade of another account is never touched). Returns the id when changed.
UPDATE trades t
   SET status = 'open', close_reason = NULL, updated_at = now()
 WHERE t.id = $1 AND t.account_id = $2 AND t.status IN ('open', 'closing')
   AND NOT EXISTS (
         SELECT 1 FROM orders o
          WHERE o.trade_id = t.id AND o.parent_id IS NULL AND o.role = 'exit'
            AND order_is_working(o.status))
   AND (t.status, t.close_reason) IS DISTINCT FROM ('open', NULL)
RETURNING t.id;

-- name: outbox_end_trade
-- A trade whose opening request ended without an order: rejected or cancelled, with the reason.
-- $4 the request's account (a trade of another account is never touched). Returns the id when changed.
UPDATE trades
   SET status = $2, close_reason = $3, closed_at = now(), updated_at = now()
 WHERE id = $1 AND account_id = $4 AND status = 'pending'
RETURNING id;

-- name: outbox_working_orders
-- The trade's working top-level orders (what a cancel request cancels).
SELECT broker_order_id FROM orders
 WHERE trade_id = $1 AND parent_id IS NULL
   AND order_is_working(status);

-- name: stream_set_error
-- A stream event syncd refused (syncd.trading.stream.refuse_update): accounts.last_error at once.
-- $1 account id, $2 the error line (prefixed "tradeCycle: ", so tradeCycle's next good pass clears it).
UPDATE accounts SET last_error = $2, updated_at = now()
 WHERE id = $1 AND last_error IS DISTINCT FROM $2;

-- name: outbox_replace_targets
-- A replace request's candidates: the trade's ($1) top-level orders in account $2, newest first,
-- working ones first; the order a replace changes is the one working order (or, when none
-- works, the newest, so the broker says why it cannot be changed).
SELECT broker_order_id, role, status, asset_class, order_class, qty, limit_price,
       order_is_working(status) AS working
  FROM orders
 WHERE trade_id = $1 AND account_id = $2 AND parent_id IS NULL
 ORDER BY order_is_working(status) DESC, COALESCE(submitted_at, created_at) DESC, id DESC;

-- name: outbox_request_trade
-- The trade of the request ($1) a replace request amends, in account $2.
SELECT trade_id FROM order_requests WHERE id = $1 AND account_id = $2;
