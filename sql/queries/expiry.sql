-- Option expiry, assignment and exercise (syncd/trading/expiry_store.py, migration 0018).

-- name: expiry_candidates
-- Live trades of the account every leg of which is flat in portfolio_positions: open ones with
-- nothing working or queued, and closing ones waiting for the broker's record (close_reason
-- 'expiration pending' or 'assignment pending'). One row per leg, with the trade's state, the
-- account's last sync, when the trade's orders last changed (a fill newer than the positions
-- sync is not yet in them), when the leg's position was last seen to close since the trade
-- opened (position_events), and how many live trades claim the leg's symbol.
-- $1 account id, $2 the pending close_reasons (text[])
WITH cand AS (SELECT * FROM expiry_candidate_trades($1, $2::text[]))  -- 0019: the rule, in one place
SELECT c.id AS trade_id, c.status, c.quantity, c.entry_price, c.broker_fill_price, c.exit_price,
       c.realized_pnl, c.close_reason, c.opened_at, c.closed_at,
       l.leg_index, l.symbol, l.side, l.ratio, a.last_synced_at,
       (SELECT max(COALESCE(o.filled_at, o.updated_at)) FROM orders o
         WHERE o.trade_id = c.id AND o.parent_id IS NULL) AS last_order_at,
       (SELECT max(e.at) FROM position_events e
         WHERE e.account_id = $1 AND e.symbol = l.symbol AND e.kind = 'closed'
           AND e.at >= COALESCE(c.opened_at, c.created_at)) AS vanished_at,
       (SELECT count(DISTINCT o.id) FROM trades o JOIN trade_legs ol ON ol.trade_id = o.id
         WHERE o.account_id = $1 AND o.status IN ('pending', 'open', 'closing') AND ol.symbol = l.symbol) AS claims
  FROM cand c
  JOIN trade_legs l ON l.trade_id = c.id
  JOIN accounts a ON a.id = c.account_id
 ORDER BY c.id, l.leg_index;

-- name: expiry_record_events
-- The broker's records, each once ((account_id, broker_event_id, kind) is unique): returns how
-- many were new. $1 account id, $2 trade_event_row[] (0018, by attribute name)
WITH ins AS (
    INSERT INTO trade_events (account_id, broker_event_id, kind, symbol, quantity, price, event_date, description)
    SELECT $1, e.broker_event_id, e.kind, e.symbol, e.quantity, e.price, e.event_date, e.description
      FROM unnest($2::trade_event_row[]) AS e
    ON CONFLICT (account_id, broker_event_id, kind) DO NOTHING
    RETURNING 1
)
SELECT count(*) AS recorded FROM ins;

-- name: expiry_unapplied_events
-- Records no trade has taken yet, oldest first. $1 account id
SELECT broker_event_id, kind, symbol, quantity, price, event_date, description
  FROM trade_events
 WHERE account_id = $1 AND trade_id IS NULL
 ORDER BY event_date, id;

-- name: expiry_stock_held
-- The account's stock positions (what an assignment or exercise delivers). $1 account id
SELECT symbol, quantity FROM portfolio_positions WHERE account_id = $1 AND asset_class <> 'us_option';

-- name: expiry_apply_events
-- Records taken by a trade (only if still untaken). $1 account id, $2 broker_event_id[], $3 kind[],
-- $4 trade id[] (parallel arrays)
UPDATE trade_events e
   SET trade_id = u.trade_id, applied_at = now()
  FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u (broker_event_id, kind, trade_id)
 WHERE e.account_id = $1 AND e.broker_event_id = u.broker_event_id AND e.kind = u.kind
   AND e.trade_id IS NULL;

-- name: expiry_adopt_import
-- A stock trade the importer made of the assignment's shares before syncd knew where they came
-- from (Tradier's record arrives the next morning): it becomes the assignment's trade.
-- $1 account id, $2 symbol, $3 parent trade id, $4 not created before (the expiry)
UPDATE trades
   SET source = 'assignment', parent_trade_id = $3, updated_at = now()
 WHERE id = (SELECT id FROM trades
              WHERE account_id = $1 AND symbol = $2 AND source = 'import' AND parent_trade_id IS NULL
                AND status = 'open' AND created_at >= $4
              ORDER BY id LIMIT 1)
RETURNING id;

-- name: expiry_insert_child
-- The stock an assignment or exercise left, as an open trade (source 'assignment') with its leg.
-- $1 account id, $2 symbol, $3 strategy, $4 quantity, $5 entry price, $6 side, $7 parent trade id
WITH ins AS (
    INSERT INTO trades (account_id, symbol, strategy, status, requested_quantity, quantity, entry_price,
                        broker_fill_price, source, parent_trade_id, opened_at)
    VALUES ($1, $2, $3, 'open', $4, $4, $5, $5, 'assignment', $7, now())
    RETURNING id
), leg AS (
    INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio)
    SELECT id, 0, $2, $6, 1 FROM ins
)
SELECT id FROM ins;

-- name: expiry_link_stock_events
-- The stock trades (Alpaca OPTRD) an assignment or exercise booked: linked to the option trade
-- and the stock trade. $1 account id, $2 underlying, $3 from date, $4 parent trade id, $5 child trade id
UPDATE trade_events
   SET trade_id = $4, child_trade_id = $5, applied_at = now()
 WHERE account_id = $1 AND kind = 'stock' AND symbol = $2 AND event_date >= $3 AND trade_id IS NULL;

-- name: expiry_stock_changes
-- Changes of the account's stock positions in these underlyings seen since a time: the sign of
-- an assignment or exercise while Tradier's history has no record yet. $1 account id,
-- $2 symbols (text[]), $3 since
SELECT symbol, new_quantity - old_quantity AS change
  FROM position_events
 WHERE account_id = $1 AND symbol = ANY($2::text[]) AND at >= $3 AND new_quantity <> old_quantity
 ORDER BY at, id;

-- name: expiry_close_outside
-- Trades whose option legs vanished before expiry and no record explains it: closed outside
-- syncd, as any position closed by hand (open, or closing while an assignment was pending).
-- $1 trade ids, $2 close_reason, $3 the pending close_reasons (text[])
UPDATE trades
   SET status = 'closed', quantity = 0, close_reason = $2, exit_price = NULL, realized_pnl = NULL,
       closed_at = now(), updated_at = now()
 WHERE id = ANY($1::bigint[])
   AND (status = 'open' OR (status = 'closing' AND close_reason = ANY($3::text[])));
