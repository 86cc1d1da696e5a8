-- tradeCycle: order watermarks, what an order does for its trade, and Alpaca's pending_review.

-- Per account: how far the order mirror has read. The next pass lists orders
-- submitted since this moment (minus an overlap for clock skew), plus the ones it
-- still holds as working.
CREATE TABLE trade_cycle_state (
    account_id       bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    orders_watermark timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- An order placed for a trade either opens it (`entry`) or closes it (`exit`);
-- orders placed outside syncd have neither (and no trade_id).
ALTER TABLE orders
    ADD COLUMN role text CHECK (role IN ('entry', 'exit'));

-- Alpaca's vocabulary includes pending_review (options orders under review).
ALTER TABLE orders DROP CONSTRAINT orders_status_check;
ALTER TABLE orders ADD CONSTRAINT orders_status_check
    CHECK (status IN ('new', 'accepted', 'pending_new', 'accepted_for_bidding',
                      'partially_filled', 'filled', 'done_for_day', 'canceled',
                      'expired', 'replaced', 'pending_cancel', 'pending_replace',
                      'stopped', 'rejected', 'suspended', 'calculated', 'held',
                      'pending_review'));

-- The outbox looks requests up by client id within an account (linking orders to trades).
CREATE INDEX order_requests_account_client ON order_requests (account_id, client_order_id)
    WHERE client_order_id IS NOT NULL;
