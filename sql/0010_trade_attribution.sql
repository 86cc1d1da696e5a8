-- A trade owns what its own fills bought, never shares held outside syncd.
--
-- Before this migration a live trade that was the only claim on a symbol "held" the whole
-- position: a trade whose order bought 4 WMT in an account that also held 250 WMT bought by
-- hand was reconciled to 254, and its close sold all 254. Now a trade that has a fill record
-- (an entry order linked to it: opened through the outbox, or an order an app linked) holds
-- at most its own quantity (opening fills minus closing fills, shrunk where the broker holds
-- less); only a trade without a fill record (imported, or written by an app or an older
-- system) that is the sole claim on its symbols still holds, and is reconciled to, the whole
-- position. The surplus of a position over what its trades claim is an untracked holding:
-- v_position_mismatches reports it (a quantity_mismatch) and import-positions can make it a
-- trade of its own.
--
-- The views are recreated (a column is added in the middle of v_trade_leg_positions), with
-- the same columns as before plus v_live_trade_legs.own_fills and
-- v_trade_leg_positions.own_fills: the trade has a fill record.

DROP VIEW v_trade_monitor;
DROP VIEW v_position_mismatches;
DROP VIEW v_trade_expected_positions;
DROP VIEW v_trade_leg_positions;
DROP VIEW v_live_trade_legs;

-- A trade has a fill record when an entry order is linked to it (a top-level order whose
-- role is entry; an order linked without a role counts as an entry, as tradeCycle takes it).
CREATE FUNCTION trade_has_own_fills(trade_id bigint) RETURNS boolean
    LANGUAGE sql STABLE PARALLEL SAFE
    RETURN EXISTS (SELECT 1 FROM orders o
                    WHERE o.trade_id = trade_has_own_fills.trade_id AND o.parent_id IS NULL
                      AND COALESCE(o.role, 'entry') = 'entry');

CREATE VIEW v_live_trade_legs AS
SELECT t.id AS trade_id, t.account_id, t.quantity AS trade_quantity,
       l.leg_index, l.symbol, l.side, l.ratio, trade_has_own_fills(t.id) AS own_fills
  FROM trades t
  JOIN trade_legs l ON l.trade_id = t.id
 WHERE t.status IN ('open', 'closing')
UNION ALL
SELECT t.id, t.account_id, t.quantity,
       0, t.symbol, CASE WHEN upper(t.strategy) LIKE 'SHORT%' THEN 'sell' ELSE 'buy' END, 1,
       trade_has_own_fills(t.id)
  FROM trades t
 WHERE t.status IN ('open', 'closing')
   AND NOT EXISTS (SELECT 1 FROM trade_legs l WHERE l.trade_id = t.id);

-- One row per leg of a live trade: its position, quote, claims and commitments, and what
-- it holds and may close (in instrument units). A leg holds |position| only when its trade
-- has no fill record and is the only claim on the symbol; otherwise at most its own share
-- (trades.quantity x ratio), never more than the position.
CREATE VIEW v_trade_leg_positions AS
SELECT x.*,
       CASE WHEN NOT x.sign_ok THEN 0
            WHEN x.claimants > 1 OR x.own_fills
                 THEN LEAST(abs(x.position_quantity), GREATEST(x.trade_quantity, 0) * x.ratio)
            ELSE abs(x.position_quantity) END AS held_quantity,
       CASE WHEN NOT x.sign_ok THEN 0
            ELSE GREATEST(0, LEAST(
                     CASE WHEN x.claimants > 1 OR x.own_fills
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
           COALESCE(h.committed_by_trade, 0) AS committed_by_trade,
           l.own_fills
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

-- As 0007's.
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
      SELECT min(CASE WHEN v.fractional THEN trim_scale(v.held_quantity / v.ratio)
                      ELSE floor(v.held_quantity / v.ratio) END) AS quantity,
             min(CASE WHEN v.fractional THEN trim_scale(v.available_leg_quantity / v.ratio)
                      ELSE floor(v.available_leg_quantity / v.ratio) END) AS available_quantity,
             COALESCE(bool_and(v.held_quantity > 0 AND v.two_sided), false) AS can_monitor,
             COALESCE(bool_and(v.held_quantity > 0), false)
                 AND COALESCE(min(CASE WHEN v.fractional THEN trim_scale(v.available_leg_quantity / v.ratio)
                                       ELSE floor(v.available_leg_quantity / v.ratio) END), 0) > 0 AS can_exit,
             COALESCE(jsonb_agg(jsonb_build_object(
                 'symbol', v.symbol, 'side', v.side, 'ratio', v.ratio,
                 'position_quantity', v.position_quantity, 'bid', v.bid, 'ask', v.ask)
                 ORDER BY v.leg_index), '[]'::jsonb) AS legs
        FROM v_trade_leg_positions v
       WHERE v.trade_id = t.id) a
 WHERE t.status IN ('open', 'closing');

-- As 0004's.
CREATE VIEW v_trade_expected_positions AS
SELECT account_id, symbol,
       sum(CASE WHEN side = 'buy' THEN 1 ELSE -1 END * trade_quantity * ratio) AS trade_quantity,
       count(DISTINCT trade_id) AS trades
  FROM v_live_trade_legs
 GROUP BY account_id, symbol;

-- As 0004's (the same columns). A position larger than what its trades claim is a
-- quantity_mismatch whose position_quantity - trade_quantity is the untracked surplus.
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
