-- An unchanged broker answer is recognised without reading the mirror back (issue 14).
--
-- After a pass that wrote an account's mirror, or that compared it with the broker's answer
-- and found nothing to write, accountSync records a fingerprint of the broker's raw answer
-- (`sync_answer`: a BLAKE2b digest of the exact bytes of balances and positions, salted with
-- syncd's version) beside fingerprints of the stored state that answer was found to match
-- (`sync_positions_state`, `sync_account_state`: computed here, by the functions below,
-- from the rows themselves). The next pass whose answer has the same fingerprint, over a
-- stored state with the same fingerprints, needs no decoding and no comparison: the same
-- bytes decode to the same positions, and the same stored rows compare the same way. One
-- statement checks both and marks the account synced.
--
-- Whoever changes the stored rows (a hand edit, a DELETE, another replica, monitorCycle's
-- first quote of a row) changes the state fingerprint: the next pass compares in full.
-- A pass that compared and wrote nothing records its answer only when it is the answer of the
-- pass before too (`sync_seen`): while prices move at the broker every answer differs, and
-- fingerprinting the stored state for an answer that will not come again would be wasted work.
-- The positions' fingerprint covers every column accountSync owns, whether monitorCycle has
-- quoted the row, and, while it has not, the marks (then still accountSync's); the account's
-- covers broker_account_id and the latest balances snapshot. NULL: nothing recorded yet.

ALTER TABLE accounts
    ADD COLUMN sync_answer bytea,
    ADD COLUMN sync_positions_state text,
    ADD COLUMN sync_account_state text,
    ADD COLUMN sync_positions integer,
    ADD COLUMN sync_seen bytea;  -- the fingerprint of the last answer seen, recorded or not

-- The fingerprint of one account's stored positions, as accountSync compares them.
CREATE FUNCTION account_positions_state(p_account bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT count(*) || ':' || md5(coalesce(string_agg(
               row(symbol, asset_class, underlying, option_type, strike, expiration, multiplier,
                   quantity, qty_available, avg_entry_price, cost_basis, quote_at IS NULL,
                   CASE WHEN quote_at IS NULL THEN row(current_price, market_value, unrealized_pl) END)::text,
               ',' ORDER BY symbol), ''))
      FROM portfolio_positions
     WHERE account_id = p_account
$$;

-- One account's latest balances snapshot (no row when there is none yet): what accountSync
-- compares the broker's balances with.
CREATE FUNCTION latest_account_snapshot(p_account bigint) RETURNS SETOF account_snapshots
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $$
    SELECT * FROM account_snapshots WHERE account_id = p_account ORDER BY taken_at DESC, id DESC LIMIT 1
$$;

-- The fingerprint of one account's broker id and latest balances snapshot.
CREATE FUNCTION account_balances_state(p_account bigint) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT md5(row(a.broker_account_id, s.equity, s.cash, s.buying_power,
                   s.long_market_value, s.short_market_value)::text)
      FROM accounts a
      LEFT JOIN LATERAL latest_account_snapshot(a.id) s ON true
     WHERE a.id = p_account
$$;

-- The account's live trades that expiry settlement looks at (syncd/trading/expiry_store.py):
-- open ones, or closing ones waiting for the broker's record (a close_reason in p_reasons),
-- with legs, every leg flat in portfolio_positions, nothing working or queued. The
-- unchanged-answer check asks whether there is any, so an idle pass skips the settlement's
-- own query when there is none.
CREATE FUNCTION expiry_candidate_trades(p_account bigint, p_reasons text[]) RETURNS SETOF trades
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT t.*
      FROM trades t
     WHERE t.account_id = p_account
       AND (t.status = 'open' OR (t.status = 'closing' AND t.close_reason = ANY(p_reasons)))
       AND EXISTS (SELECT 1 FROM trade_legs l WHERE l.trade_id = t.id)
       AND NOT EXISTS (
             SELECT 1 FROM trade_legs l
               JOIN portfolio_positions p ON p.account_id = p_account AND p.symbol = l.symbol
              WHERE l.trade_id = t.id)
       AND NOT EXISTS (
             SELECT 1 FROM orders o
              WHERE o.trade_id = t.id AND o.parent_id IS NULL AND order_is_working(o.status))
       AND NOT EXISTS (
             SELECT 1 FROM order_requests r
              WHERE r.trade_id = t.id AND r.state IN ('queued', 'submitting'))
$$;
