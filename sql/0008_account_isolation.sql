-- Accounts are sealed from each other: every row that refers to a trade belongs to that trade's
-- account, and a leg order row to its parent's account. The database refuses anything else
-- (composite foreign keys), so no code path, present or future, can link across accounts.
--
--   order_requests (account_id, trade_id) -> trades (account_id, id)
--   orders         (account_id, trade_id) -> trades (account_id, id)
--   orders         (account_id, parent_id) -> orders (account_id, id)
--   trade_legs and order_events have no account of their own: they are bound through their
--   trade (trade_legs.trade_id) and order (order_events.order_id), whose account is fixed by the
--   keys above; a referenced trade cannot move to another account (ON UPDATE NO ACTION).
--
-- Existing rows that cross accounts (written before this migration: an `open` whose trade_id named
-- another account's trade linked that request and its order to the other account's trade):
--   * order_requests: the link is set to NULL and last_error says so; a request still `queued`
--     ends `failed` (it is never placed), one `submitting` stays submitting (its outcome is looked
--     up by client id as usual; an `open` then gets a trade of its own account);
--   * orders: the link (trade_id, role) is set to NULL: the order stays mirrored, unlinked, like
--     an order placed by hand;
--   * a leg order row whose parent is in another account cannot come from syncd: the migration
--     stops with an error naming how many there are, and changes nothing.

DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n
      FROM orders c JOIN orders p ON p.id = c.parent_id
     WHERE p.account_id <> c.account_id;
    IF n > 0 THEN
        RAISE EXCEPTION '% order leg row(s) have a parent order of another account (orders.parent_id); '
                        'fix or delete them, then migrate again', n;
    END IF;
END $$;

UPDATE order_requests r
   SET trade_id = NULL,
       state = CASE WHEN r.state = 'queued' THEN 'failed' ELSE r.state END,
       last_error = left(format('trade_id %s named a trade of another account: unlinked by migration 0008',
                                r.trade_id) || COALESCE('; ' || r.last_error, ''), 500),
       updated_at = now()
  FROM trades t
 WHERE t.id = r.trade_id AND t.account_id <> r.account_id;

UPDATE orders o
   SET trade_id = NULL, role = NULL, updated_at = now()
  FROM trades t
 WHERE t.id = o.trade_id AND t.account_id <> o.account_id;

ALTER TABLE trades ADD CONSTRAINT trades_account_id_id_key UNIQUE (account_id, id);
ALTER TABLE orders ADD CONSTRAINT orders_account_id_id_key UNIQUE (account_id, id);

ALTER TABLE order_requests
    DROP CONSTRAINT order_requests_trade_id_fkey,
    ADD CONSTRAINT order_requests_trade_same_account FOREIGN KEY (account_id, trade_id)
        REFERENCES trades (account_id, id) ON DELETE SET NULL (trade_id);

ALTER TABLE orders
    DROP CONSTRAINT orders_trade_id_fkey,
    ADD CONSTRAINT orders_trade_same_account FOREIGN KEY (account_id, trade_id)
        REFERENCES trades (account_id, id) ON DELETE SET NULL (trade_id),
    DROP CONSTRAINT orders_parent_id_fkey,
    ADD CONSTRAINT orders_parent_same_account FOREIGN KEY (account_id, parent_id)
        REFERENCES orders (account_id, id) ON DELETE CASCADE;
