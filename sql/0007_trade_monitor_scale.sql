-- v_trade_monitor: a fractional (stock) trade's quantity read 118.0000000000000000 because
-- numeric division carries 16 decimal places; trim_scale keeps the value and drops the noise.
-- Same columns as 0004's view, so CREATE OR REPLACE keeps dependants intact.

CREATE OR REPLACE VIEW v_trade_monitor AS
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
