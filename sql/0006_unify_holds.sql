-- One definition of a working order, and of what working closing orders already hold.
--
-- Before this migration the list of working (non-terminal) order statuses was written out
-- in several places, not all alike (0001/0004 lacked stopped, suspended and pending_review),
-- and the outbox computed "what working closing orders hold" by its own rules, not the
-- monitor's. Now:
--   * order_is_working(status) is the one SQL list; it is the complement of
--     _TERMINAL in the Python package's brokers/types.py (test_order_status_sql.py holds the
--     two together);
--   * v_closing_order_holds is the one definition of what working closing orders hold,
--     read by v_trade_leg_positions (monitorCycle, v_trade_monitor) and by the outbox's
--     outbox_close_inputs alike.

-- A SQL-standard body (RETURN): parsed once, inlined by the planner (so a query's
-- `order_is_working(status)` still matches a partial index), and immune to search_path.
-- IMMUTABLE, so it may stand in an index predicate. Never change it in place with CREATE OR
-- REPLACE: the partial indexes below would keep rows by the old list. A new list is a new
-- migration that drops and recreates those indexes.
CREATE FUNCTION order_is_working(status text) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding', 'partially_filled',
                      'pending_cancel', 'pending_replace', 'held', 'calculated', 'stopped',
                      'suspended', 'pending_review');

-- The partial indexes of working orders, by the one list (theirs lacked stopped, suspended
-- and pending_review, so queries asking for every working order could not use them).
DROP INDEX orders_working;
CREATE INDEX orders_working ON orders (account_id) WHERE order_is_working(status);
DROP INDEX orders_working_symbol;
CREATE INDEX orders_working_symbol ON orders (account_id, symbol) WHERE order_is_working(status);

-- What working orders that close a position still hold of it, per order row. The union of
-- the rules the monitor and the outbox used to apply separately:
--   * working: the row's status, and for a leg its parent's too, by order_is_working;
--   * closing: intent 'close', or placed as a trade's exit (role 'exit', on the parent for
--     a leg), or the side that reduces the position held;
--   * the rows that hold something: an order's legs rather than the order (a row with
--     legs, e.g. an OCO's first order, and an mleg parent never count themselves);
--   * a leg reported with qty 0 (Alpaca's mleg legs) holds its parent's qty x its ratio.
CREATE OR REPLACE VIEW v_closing_order_holds AS
SELECT o.account_id, o.symbol, COALESCE(o.trade_id, p.trade_id) AS trade_id, o.id AS order_id,
       GREATEST(CASE WHEN o.qty > 0 THEN o.qty ELSE COALESCE(p.qty, 0) * COALESCE(o.ratio_qty, 1) END
                - o.filled_qty, 0) AS held_quantity
  FROM orders o
  LEFT JOIN orders p ON p.id = o.parent_id
  JOIN portfolio_positions pp ON pp.account_id = o.account_id AND pp.symbol = o.symbol
 WHERE order_is_working(o.status)
   AND (p.id IS NULL OR order_is_working(p.status))
   AND NOT (o.parent_id IS NULL AND o.order_class = 'mleg')
   AND NOT EXISTS (SELECT 1 FROM orders c WHERE c.parent_id = o.id)
   AND (o.intent = 'close'
        OR COALESCE(p.role, o.role) = 'exit'
        OR (o.side = 'sell' AND pp.quantity > 0)
        OR (o.side = 'buy' AND pp.quantity < 0));

-- As 0004's, with the one list of working statuses.
CREATE OR REPLACE VIEW v_trade_exits_working AS
SELECT r.account_id, r.trade_id, 'request' AS via, r.id AS ref
  FROM order_requests r
  LEFT JOIN orders o ON o.account_id = r.account_id AND o.broker_order_id = r.broker_order_id
 WHERE r.kind = 'close' AND r.trade_id IS NOT NULL
   AND (r.state IN ('queued', 'submitting')
        OR (r.state = 'submitted' AND (o.id IS NULL OR order_is_working(o.status))))
UNION ALL
SELECT h.account_id, h.trade_id, 'order', h.order_id
  FROM v_closing_order_holds h
 WHERE h.trade_id IS NOT NULL AND h.held_quantity > 0;
