-- name: monitor_pass_state
-- What a monitorCycle pass starts from, in one statement, for each of several accounts at once
-- (syncd.db.grouped: the passes asking meanwhile), in the order given (``ord``). ``known``: the
-- account exists. ``monitor_rest``: what the account's last pass kept (0021); ``inputs``, what
-- identifies the exit rules' inputs that the held rows' versions do not (the changes noted for
-- the account in trade_input_changes with those purged into trade_input_purged, and the rows held
-- at 0), as a count and a hash sum of each; the schema's version (the views judged from). Then
-- the held instruments, by symbol: ``symbols`` and their row versions ``xmins`` (xmin: a new one
-- with every write to the row; monitor_cycle.rows_seen), in the same order.
-- $1 account ids (bigint[]).
WITH ask AS (
    SELECT t.id, t.ord FROM unnest($1::bigint[]) WITH ORDINALITY AS t(id, ord)
)
SELECT ask.ord, a.id IS NOT NULL AS known, a.monitor_rest,
       (SELECT (x.n + coalesce(g.n, 0)) || ':' || (x.h + coalesce(g.h, 0))
          FROM (SELECT count(*) AS n, coalesce(sum(hashtextextended(c.xid::text, 0)), 0) AS h
                  FROM trade_input_changes c WHERE c.account_id = ask.id) x
          LEFT JOIN trade_input_purged g ON g.account_id = ask.id)
       || '/' ||
       (SELECT count(*) || ':' || coalesce(sum(hashtextextended(z.symbol || ':' || z.xmin::text, 0)), 0)
          FROM portfolio_positions z WHERE z.account_id = ask.id AND z.quantity = 0) AS inputs,
       (SELECT max(version) FROM schema_migrations) AS schema_version,
       h.symbols, h.xmins
  FROM ask
  LEFT JOIN accounts a ON a.id = ask.id
  LEFT JOIN LATERAL (
      SELECT coalesce(array_agg(p.symbol ORDER BY p.symbol), '{}'::text[]) AS symbols,
             coalesce(array_agg(p.xmin ORDER BY p.symbol), '{}'::xid[]) AS xmins
        FROM portfolio_positions p WHERE p.account_id = ask.id AND p.quantity <> 0
  ) h ON true
 ORDER BY ask.ord;

-- name: monitor_keep_rest
-- $1 account id, $2 what the pass leaves kept (accounts.monitor_rest, 0021; NULL: nothing).
-- Written only when it differs, so a pass at rest writes nothing.
UPDATE accounts SET monitor_rest = $2::jsonb WHERE id = $1 AND monitor_rest IS DISTINCT FROM $2::jsonb;

-- name: monitor_write_quotes
-- $1 account id; $2 quote_row[] (0013), one per held symbol: symbol, bid, ask, last (NULL: keep),
-- price = mid or last (NULL: keep), quote_at (NULL: now, or kept when nothing was quoted), delta, gamma, theta,
-- vega, iv = implied volatility (NULL: keep). A symbol the broker did not quote comes with NULL
-- bid and ask: nothing two-sided is known for it, so it can be neither monitored nor exited.
-- market_value and unrealized_pl come from the row's own quantity, multiplier and cost basis
-- (accountSync's, never rewritten here), so a concurrent quantity change is never undone.
-- A row is written only when a value (quote_at aside) changes. Returns the symbols written, each with
-- its new row version (xmin).
UPDATE portfolio_positions p
   SET bid = u.bid,
       ask = u.ask,
       last = COALESCE(u.last, p.last),
       current_price = COALESCE(u.price, p.current_price),
       market_value = COALESCE(u.price * p.quantity * p.multiplier, p.market_value),
       unrealized_pl = CASE WHEN u.price IS NULL OR p.cost_basis IS NULL THEN p.unrealized_pl
                            ELSE u.price * p.quantity * p.multiplier - sign(p.quantity) * abs(p.cost_basis) END,
       quote_at = CASE WHEN num_nulls(u.bid, u.ask, u.last) = 3 THEN p.quote_at ELSE COALESCE(u.quote_at, now()) END,
       delta = COALESCE(u.delta, p.delta),
       gamma = COALESCE(u.gamma, p.gamma),
       theta = COALESCE(u.theta, p.theta),
       vega = COALESCE(u.vega, p.vega),
       implied_volatility = COALESCE(u.iv, p.implied_volatility),
       updated_at = now()
  FROM unnest($2::quote_row[]) AS u
 WHERE p.account_id = $1
   AND p.symbol = u.symbol
   AND (p.bid, p.ask, p.last, p.current_price, p.market_value, p.unrealized_pl,
        p.delta, p.gamma, p.theta, p.vega, p.implied_volatility)
       IS DISTINCT FROM
       (u.bid, u.ask, COALESCE(u.last, p.last), COALESCE(u.price, p.current_price),
        COALESCE(u.price * p.quantity * p.multiplier, p.market_value),
        CASE WHEN u.price IS NULL OR p.cost_basis IS NULL THEN p.unrealized_pl
             ELSE u.price * p.quantity * p.multiplier - sign(p.quantity) * abs(p.cost_basis) END,
        COALESCE(u.delta, p.delta), COALESCE(u.gamma, p.gamma), COALESCE(u.theta, p.theta),
        COALESCE(u.vega, p.vega), COALESCE(u.iv, p.implied_volatility))
RETURNING p.symbol, p.xmin;

-- name: monitor_trade_legs
-- $1 account id. Every leg of the account's live trades with its position, quote, claims and
-- commitments (v_trade_leg_positions), and its trade's fields; ordered by trade, then leg.
SELECT v.trade_id, v.leg_index, v.symbol, v.side, v.ratio, v.position_quantity, v.bid, v.ask, v.last,
       COALESCE(v.multiplier, 1) AS multiplier, COALESCE(v.asset_class, 'us_equity') AS asset_class,
       v.expiration, v.claimants, v.committed_quantity, v.committed_by_trade, v.own_fills,
       t.strategy, t.status, t.quantity, t.entry_price, t.take_profit_pct, t.stop_loss_pct,
       t.current_price, t.floating_pnl,
       EXISTS (SELECT 1 FROM v_trade_exits_working w
                WHERE w.account_id = t.account_id AND w.trade_id = t.id) AS exit_pending
  FROM v_trade_leg_positions v
  JOIN trades t ON t.id = v.trade_id
 WHERE v.account_id = $1
 ORDER BY v.trade_id, v.leg_index;

-- name: monitor_write_trades
-- $1 account id; $2 trade_mark_row[] (0013): id, current_price per unit, floating_pnl. Only changed rows.
-- Returns the ids written.
UPDATE trades t
   SET current_price = u.current_price, floating_pnl = u.floating_pnl, updated_at = now()
  FROM unnest($2::trade_mark_row[]) AS u
 WHERE t.id = u.id
   AND t.account_id = $1
   AND t.status IN ('open', 'closing')
   AND (t.current_price, t.floating_pnl) IS DISTINCT FROM (u.current_price, u.floating_pnl)
RETURNING t.id;

-- name: monitor_queue_exits
-- $1 account id; $2 trade_exit_row[] (0013): trade_id, reason = close_reason (the rule), qty to close.
-- For each trade still open with no close request pending, in one statement: the trade goes
-- `closing` with its close_reason, and one `close` request is queued for the quantity
-- (payload {"type": "market", "qty": N, "reason": rule}: the outbox keeps the rule as close_reason)
-- (client_order_id left NULL: tradeCycle's outbox fills it and places the order). A trade that
-- changed meanwhile (another instance queued its exit) is skipped by the WHERE, re-checked on
-- the locked row. Returns (request id, trade id, reason, qty) of what was queued.
WITH fired AS (
    SELECT * FROM unnest($2::trade_exit_row[])
), closing AS (
    UPDATE trades t
       SET status = 'closing', close_reason = f.reason, updated_at = now()
      FROM fired f
     WHERE t.id = f.trade_id
       AND t.account_id = $1
       AND t.status = 'open'
       AND NOT EXISTS (SELECT 1 FROM order_requests r
                        WHERE r.trade_id = t.id AND r.kind = 'close' AND r.state IN ('queued', 'submitting'))
    RETURNING t.id, f.reason, f.qty
)
INSERT INTO order_requests (account_id, kind, trade_id, payload)
SELECT $1, 'close', c.id, jsonb_build_object('type', 'market', 'qty', c.qty, 'reason', c.reason)
  FROM closing c
RETURNING id, trade_id, payload;

-- name: monitor_notify
-- $1 JSON payloads for NOTIFY syncd_events; sent inside the pass's transaction, so delivered
-- on commit and never for a rolled-back pass.
SELECT count(pg_notify('syncd_events', p)) FROM unnest($1::text[]) AS p;

-- name: verify_mirrored_positions
-- $1 account id. What portfolio_positions holds for the account.
SELECT symbol, quantity FROM portfolio_positions WHERE account_id = $1 ORDER BY symbol;

-- name: verify_expected_positions
-- $1 account id. What the account's open trades say it holds, per instrument (signed).
SELECT symbol, trade_quantity, trades FROM v_trade_expected_positions WHERE account_id = $1 ORDER BY symbol;
