-- monitorCycle: what monitoring and exits read (CONTRACT §3 views, §4 "monitoring and exits
-- read portfolio_positions, never a possibly stale trades.quantity").
--
-- The arithmetic mirrors syncd/pnl.py (tests hold the two to the same answers):
--   * a leg holds |position| when its trade is the only open trade on that symbol, else at
--     most its own share (trades.quantity x ratio); a position of the wrong sign for the
--     leg's side is not the leg's;
--   * available per leg = what it holds minus what working closing orders already hold;
--   * a trade's units = min over legs of leg quantity / ratio, floored to whole units except
--     for a lone stock or crypto leg (fractional shares are real);
--   * a two-sided quote: bid and ask known, ask > 0, not crossed (a 0 bid is a real bid).
-- trades.current_price and trades.floating_pnl are written by monitorCycle from the quotes.

-- Working orders by instrument: what "working closing orders" are looked up by.
CREATE INDEX orders_working_symbol ON orders (account_id, symbol)
    WHERE status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding', 'partially_filled',
                     'pending_cancel', 'pending_replace', 'held', 'calculated');

-- The instruments of every live (open or closing) trade. A trade without trade_legs rows
-- (an app may insert only the required columns) is one leg: its symbol, bought (sold for
-- a SHORT_* strategy), ratio 1.
CREATE VIEW v_live_trade_legs AS
SELECT t.id AS trade_id, t.account_id, t.quantity AS trade_quantity,
       l.leg_index, l.symbol, l.side, l.ratio
  FROM trades t
  JOIN trade_legs l ON l.trade_id = t.id
 WHERE t.status IN ('open', 'closing')
UNION ALL
SELECT t.id, t.account_id, t.quantity,
       0, t.symbol, CASE WHEN upper(t.strategy) LIKE 'SHORT%' THEN 'sell' ELSE 'buy' END, 1
  FROM trades t
 WHERE t.status IN ('open', 'closing')
   AND NOT EXISTS (SELECT 1 FROM trade_legs l WHERE l.trade_id = t.id);

-- What working orders that close a position still hold of it, per order row (a multi-leg
-- order's legs, not its parent): intent 'close', or the side that reduces the position.
CREATE VIEW v_closing_order_holds AS
SELECT o.account_id, o.symbol, COALESCE(o.trade_id, p.trade_id) AS trade_id, o.id AS order_id,
       GREATEST(CASE WHEN o.qty > 0 THEN o.qty ELSE COALESCE(p.qty, 0) * COALESCE(o.ratio_qty, 1) END
                - o.filled_qty, 0) AS held_quantity
  FROM orders o
  LEFT JOIN orders p ON p.id = o.parent_id
  JOIN portfolio_positions pp ON pp.account_id = o.account_id AND pp.symbol = o.symbol
 WHERE o.status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding', 'partially_filled',
                    'pending_cancel', 'pending_replace', 'held', 'calculated')
   AND (p.id IS NULL OR p.status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding',
                                     'partially_filled', 'pending_cancel', 'pending_replace',
                                     'held', 'calculated'))
   AND NOT (o.parent_id IS NULL AND o.order_class = 'mleg')
   AND (o.intent = 'close' OR (o.side = 'sell' AND pp.quantity > 0) OR (o.side = 'buy' AND pp.quantity < 0));

-- Live trades with an exit already working: a close request not yet placed (queued,
-- submitting), or placed and its order still working (or not yet seen in `orders`), or any
-- working order closing one of the trade's positions. monitorCycle never queues a second exit.
CREATE VIEW v_trade_exits_working AS
SELECT r.account_id, r.trade_id, 'request' AS via, r.id AS ref
  FROM order_requests r
  LEFT JOIN orders o ON o.account_id = r.account_id AND o.broker_order_id = r.broker_order_id
 WHERE r.kind = 'close' AND r.trade_id IS NOT NULL
   AND (r.state IN ('queued', 'submitting')
        OR (r.state = 'submitted'
            AND (o.id IS NULL OR o.status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding',
                                              'partially_filled', 'pending_cancel', 'pending_replace',
                                              'held', 'calculated'))))
UNION ALL
SELECT h.account_id, h.trade_id, 'order', h.order_id
  FROM v_closing_order_holds h
 WHERE h.trade_id IS NOT NULL AND h.held_quantity > 0;

-- One row per leg of a live trade: its position, quote, claims and commitments, and what
-- it holds and may close (in instrument units).
CREATE VIEW v_trade_leg_positions AS
SELECT x.*,
       CASE WHEN NOT x.sign_ok THEN 0
            WHEN x.claimants > 1 THEN LEAST(abs(x.position_quantity), GREATEST(x.trade_quantity, 0) * x.ratio)
            ELSE abs(x.position_quantity) END AS held_quantity,
       CASE WHEN NOT x.sign_ok THEN 0
            ELSE GREATEST(0, LEAST(
                     CASE WHEN x.claimants > 1
                          THEN LEAST(abs(x.position_quantity), GREATEST(x.trade_quantity, 0) * x.ratio)
                          ELSE abs(x.position_quantity) END - x.committed_by_trade,
                     abs(x.position_quantity) - x.committed_quantity)) END AS available_leg_quantity,
       (x.bid IS NOT NULL AND x.ask IS NOT NULL AND x.bid >= 0 AND x.ask > 0 AND x.ask >= x.bid) AS two_sided,
       (x.n_legs = 1 AND x.asset_class IN ('us_equity', 'crypto')) AS fractional
  FROM (
    SELECT l.trade_id, l.account_id, l.trade_quantity, l.leg_index, l.symbol, l.side, l.ratio,
           count(*) OVER (PARTITION BY l.account_id, l.trade_id) AS n_legs,  -- account_id: lets WHERE account_id = $1 reach inside
           pp.quantity AS position_quantity, pp.bid, pp.ask, pp.last, pp.current_price,
           pp.multiplier, pp.asset_class, pp.expiration, pp.quote_at,
           COALESCE(pp.quantity <> 0 AND (pp.quantity > 0) = (l.side = 'buy'), false) AS sign_ok,
           c.claimants,
           COALESCE(h.committed, 0) AS committed_quantity,
           COALESCE(h.committed_by_trade, 0) AS committed_by_trade
      FROM v_live_trade_legs l
      LEFT JOIN portfolio_positions pp ON pp.account_id = l.account_id AND pp.symbol = l.symbol
      CROSS JOIN LATERAL (
          SELECT count(DISTINCT o.trade_id) AS claimants
            FROM v_live_trade_legs o
           WHERE o.account_id = l.account_id AND o.symbol = l.symbol) c
      CROSS JOIN LATERAL (
          SELECT sum(ch.held_quantity) AS committed,
                 sum(ch.held_quantity) FILTER (WHERE ch.trade_id = l.trade_id) AS committed_by_trade
            FROM v_closing_order_holds ch
           WHERE ch.account_id = l.account_id AND ch.symbol = l.symbol) h
  ) x;

-- CONTRACT §3: one row per open trade (status open or closing). `quantity` is what the
-- account holds of it (from portfolio_positions); `trade_quantity` is trades.quantity.
CREATE VIEW v_trade_monitor AS
SELECT t.id AS trade_id, t.account_id, t.symbol, t.strategy,
       a.quantity, a.available_quantity, a.can_monitor, a.can_exit,
       t.current_price, t.floating_pnl, a.legs,
       t.status, t.quantity AS trade_quantity, t.entry_price, t.take_profit_pct, t.stop_loss_pct,
       t.close_reason, t.updated_at,
       EXISTS (SELECT 1 FROM v_trade_exits_working w
                WHERE w.account_id = t.account_id AND w.trade_id = t.id) AS exit_pending
  FROM trades t
  CROSS JOIN LATERAL (
      SELECT min(CASE WHEN v.fractional THEN v.held_quantity / v.ratio
                      ELSE floor(v.held_quantity / v.ratio) END) AS quantity,
             min(CASE WHEN v.fractional THEN v.available_leg_quantity / v.ratio
                      ELSE floor(v.available_leg_quantity / v.ratio) END) AS available_quantity,
             COALESCE(bool_and(v.held_quantity > 0 AND v.two_sided), false) AS can_monitor,
             COALESCE(bool_and(v.held_quantity > 0), false)
                 AND COALESCE(min(CASE WHEN v.fractional THEN v.available_leg_quantity / v.ratio
                                       ELSE floor(v.available_leg_quantity / v.ratio) END), 0) > 0 AS can_exit,
             COALESCE(jsonb_agg(jsonb_build_object(
                 'symbol', v.symbol, 'side', v.side, 'ratio', v.ratio,
                 'position_quantity', v.position_quantity, 'bid', v.bid, 'ask', v.ask)
                 ORDER BY v.leg_index), '[]'::jsonb) AS legs
        FROM v_trade_leg_positions v
       WHERE v.trade_id = t.id) a
 WHERE t.status IN ('open', 'closing');

-- What open trades say the account should hold, per instrument (signed: sell legs < 0).
CREATE VIEW v_trade_expected_positions AS
SELECT account_id, symbol,
       sum(CASE WHEN side = 'buy' THEN 1 ELSE -1 END * trade_quantity * ratio) AS trade_quantity,
       count(DISTINCT trade_id) AS trades
  FROM v_live_trade_legs
 GROUP BY account_id, symbol;

-- CONTRACT §3: what `syncd verify` reports from the database alone.
--   untracked_position: held, and no open trade has a leg on it;
--   missing_position:   an open trade's leg, and the account holds none of it;
--   quantity_mismatch:  both, and the trades' quantities (summed, signed) disagree with it.
CREATE VIEW v_position_mismatches AS
SELECT COALESCE(p.account_id, e.account_id) AS account_id,
       COALESCE(p.symbol, e.symbol) AS symbol,
       CASE WHEN e.symbol IS NULL THEN 'untracked_position'
            WHEN p.symbol IS NULL THEN 'missing_position'
            ELSE 'quantity_mismatch' END AS kind,
       COALESCE(p.quantity, 0) AS position_quantity,
       COALESCE(e.trade_quantity, 0) AS trade_quantity
  FROM (SELECT account_id, symbol, quantity FROM portfolio_positions WHERE quantity <> 0) p
  FULL JOIN v_trade_expected_positions e ON e.account_id = p.account_id AND e.symbol = p.symbol
 WHERE p.symbol IS NULL OR e.symbol IS NULL OR p.quantity <> e.trade_quantity;
