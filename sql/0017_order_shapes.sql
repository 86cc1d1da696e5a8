-- Every order shape the brokers send, and replacing a working order (issue 11).
--
--   * orders.qty is NULL when the broker gives no quantity (an Alpaca notional order: "qty": null,
--     "notional": "500"), never 0; orders.notional keeps the dollar amount. Rows written before
--     this migration keep their qty (a notional order mirrored then reads 0 until it is seen again).
--   * orders.stop_price: a stop or stop-limit order's (or leg's) trigger.
--   * orders.replaces / replaced_by: Alpaca's PATCH /v2/orders/{id} makes a new order that
--     replaces the old one (which ends `replaced`); the new one names the old (replaces) and
--     inherits its trade.
--   * order_requests.kind 'replace': an app asks syncd to change a working order's limit and/or qty.
--   * v_closing_order_holds: a bracket/OCO/OTO order's legs are orders of their own. Their closing
--     ones hold the position once per order group (one cancels the other), not once each, and a
--     bracket's take-profit/stop legs hold once the entry has filled (whatever the parent's status:
--     a filled entry is terminal, its exits work on), at most what the entry filled.

ALTER TABLE orders ALTER COLUMN qty DROP NOT NULL, ALTER COLUMN qty DROP DEFAULT;
ALTER TABLE orders
    ADD COLUMN notional numeric,
    ADD COLUMN stop_price numeric,
    ADD COLUMN replaces text,
    ADD COLUMN replaced_by text;

ALTER TYPE order_row
    ADD ATTRIBUTE notional numeric,
    ADD ATTRIBUTE stop_price numeric,
    ADD ATTRIBUTE replaces text,
    ADD ATTRIBUTE replaced_by text;
ALTER TYPE order_leg_row
    ADD ATTRIBUTE notional numeric,
    ADD ATTRIBUTE stop_price numeric;

ALTER TABLE order_requests DROP CONSTRAINT order_requests_kind_check;
ALTER TABLE order_requests ADD CONSTRAINT order_requests_kind_check
    CHECK (kind IN ('open', 'close', 'cancel', 'replace'));

-- As 0006's, with the contingent (bracket/OCO/OTO) groups:
--   * mleg: unchanged (the legs hold while the parent works; a leg with qty 0 or NULL holds the
--     parent's qty x its ratio);
--   * contingent: every working closing row of the group (the parent and its legs) by its own
--     status; a leg of a bracket/OTO parent only once the entry (the parent, or the group's
--     opening leg) has filled, at most what it filled; per group and symbol the largest hold
--     counts, once.
-- NOT MATERIALIZED and DISTINCT ON (account_id, symbol, ...): a reader's account/symbol filter
-- (v_trade_leg_positions asks per leg) is pushed into both branches, not applied after the whole view.
CREATE OR REPLACE VIEW v_closing_order_holds AS
WITH rows AS NOT MATERIALIZED (
    SELECT o.account_id, o.symbol, COALESCE(o.trade_id, p.trade_id) AS trade_id, o.id AS order_id,
           COALESCE(p.id, o.id) AS group_id,
           COALESCE(p.order_class, o.order_class) IN ('bracket', 'oco', 'oto') AS contingent,
           GREATEST(CASE WHEN o.qty > 0 AND p.order_class IN ('bracket', 'oto')
                              THEN LEAST(o.qty, e.filled)
                         WHEN o.qty > 0 THEN o.qty
                         ELSE COALESCE(p.qty, 0) * COALESCE(o.ratio_qty, 1) END
                    - o.filled_qty, 0) AS held_quantity
      FROM orders o
      LEFT JOIN orders p ON p.id = o.parent_id
      -- what the entry of a bracket/OTO group has filled: the parent (Alpaca), or the group's
      -- opening leg (Tradier's OTO/OTOCO, whose first leg is the entry)
      LEFT JOIN LATERAL (
          SELECT GREATEST(p.filled_qty, COALESCE(max(s.filled_qty), 0)) AS filled
            FROM orders s
           WHERE s.parent_id = p.id AND s.intent = 'open'
      ) e ON p.order_class IN ('bracket', 'oto')
      JOIN portfolio_positions pp ON pp.account_id = o.account_id AND pp.symbol = o.symbol
     WHERE order_is_working(o.status)
       AND (p.id IS NULL
            OR (p.order_class NOT IN ('bracket', 'oco', 'oto') AND order_is_working(p.status))
            OR p.order_class = 'oco'
            OR (p.order_class IN ('bracket', 'oto') AND e.filled > 0))
       AND NOT (o.parent_id IS NULL AND o.order_class = 'mleg')
       AND NOT (o.order_class NOT IN ('bracket', 'oco', 'oto') AND EXISTS (SELECT 1 FROM orders c WHERE c.parent_id = o.id))
       AND (o.intent = 'close'
            OR COALESCE(p.role, o.role) = 'exit'
            OR (o.side = 'sell' AND pp.quantity > 0)
            OR (o.side = 'buy' AND pp.quantity < 0))
)
SELECT account_id, symbol, trade_id, order_id, held_quantity
  FROM rows WHERE NOT contingent
UNION ALL
(SELECT DISTINCT ON (account_id, symbol, group_id) account_id, symbol, trade_id, order_id, held_quantity
   FROM rows WHERE contingent
  ORDER BY account_id, symbol, group_id, held_quantity DESC);
