-- 0023: accountSync's new rows inserted without an upsert's conflict probe (issue 14).
--
-- account_sync_apply (0022) upserted every row it was given. A row the diff found no stored row
-- for (a first sync writes nothing else) needs no conflict arbiter: the diff was made under the
-- account's lock, or checked against the stored positions' fingerprint under it, and positions
-- are inserted by accountSync alone. Each row of p_rows may now carry a 15th element, true for
-- such a row: those are inserted plainly (about 4 % of Postgres's CPU for a first sync), the
-- others upserted as before. A row without the element is upserted, so a caller of 0022's form
-- still works. Same signature, same result columns.

CREATE OR REPLACE FUNCTION account_sync_apply(
    p_account bigint,
    p_lock_class integer,
    p_expected text,         -- the stored positions' fingerprint the diff was made against (NULL: no check)
    p_rows bytea,            -- rows to write: JSON, an array of arrays (the first 14 fields of a PositionRow,
                             -- then true when the diff found no stored row of that symbol)
    p_deletes text[],        -- symbols to delete
    p_events bytea,          -- position events: JSON, an array of [symbol, kind, old_quantity, new_quantity]
    p_balances balances_row, -- the broker's balances (a snapshot is written when they differ from the latest)
    p_broker_id text,        -- the broker's account id (NULL: unknown, the stored one holds)
    p_payloads text[],       -- NOTIFY syncd_events payloads of the positions written
    p_account_payload text,  -- sent too when a snapshot is written or the broker account id changes
    p_fingerprint bytea,     -- the broker's answer's fingerprint, recorded (NULL: none)
    p_positions integer,     -- how many positions the answer has
    p_pending text[],        -- the pending close_reasons (for the expiry hint)
    p_state_as_read text     -- the positions' fingerprint to record when no row is written (NULL: computed)
) RETURNS TABLE (stale boolean, upserted bigint, deleted bigint, events bigint, snapshots bigint,
                 notified bigint, snapshot boolean, broker_changed boolean, expiry boolean)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    v_snapshot boolean;
    v_broker boolean;
    v_payloads text[];
    v_up bigint;
    v_gone bigint;
    v_ev bigint;
    v_snap bigint;
    v_notes bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock_class, (p_account % 2147483647)::int);
    IF p_expected IS NOT NULL AND account_positions_state(p_account) IS DISTINCT FROM p_expected THEN
        RETURN QUERY SELECT true, 0::bigint, 0::bigint, 0::bigint, 0::bigint, 0::bigint, false, false, NULL::boolean;
        RETURN;
    END IF;
    SELECT s.equity IS NULL
           OR (s.equity, s.cash, s.buying_power, s.long_market_value, s.short_market_value)
              IS DISTINCT FROM ((p_balances).equity, (p_balances).cash, (p_balances).buying_power,
                                (p_balances).long_market_value, (p_balances).short_market_value),
           p_broker_id IS NOT NULL AND a.broker_account_id IS DISTINCT FROM p_broker_id
      INTO v_snapshot, v_broker
      FROM accounts a
      LEFT JOIN LATERAL latest_account_snapshot(a.id) s ON true
     WHERE a.id = p_account;
    v_snapshot := COALESCE(v_snapshot, true);  -- no such account: as if it had no snapshot
    v_broker := COALESCE(v_broker, p_broker_id IS NOT NULL);
    v_payloads := CASE WHEN v_snapshot OR v_broker THEN p_payloads || p_account_payload ELSE p_payloads END;

    -- bid/ask/last/greeks/quote_at are monitorCycle's and never written here; current_price,
    -- market_value and unrealized_pl keep their stored value when the broker gave none.
    WITH given AS (
        SELECT u, COALESCE((u->>14)::boolean, false) AS fresh
          FROM jsonb_array_elements(convert_from(p_rows, 'UTF8')::jsonb) AS u
    ), ins AS (
        -- rows the diff found no stored row for: a plain INSERT (no conflict arbiter to probe first);
        -- should one exist after all, the statement fails, nothing is written, and the next pass compares again
        INSERT INTO portfolio_positions
               (account_id, symbol, asset_class, underlying, option_type, strike, expiration, multiplier,
                quantity, qty_available, avg_entry_price, cost_basis, current_price, market_value, unrealized_pl)
        SELECT p_account, u->>0, u->>1, u->>2, u->>3, (u->>4)::numeric, (u->>5)::date, (u->>6)::numeric,
               (u->>7)::numeric, (u->>8)::numeric, (u->>9)::numeric, (u->>10)::numeric, (u->>11)::numeric,
               (u->>12)::numeric, (u->>13)::numeric
          FROM given
         WHERE given.fresh
        RETURNING 1
    ), up AS (
        INSERT INTO portfolio_positions AS p
               (account_id, symbol, asset_class, underlying, option_type, strike, expiration, multiplier,
                quantity, qty_available, avg_entry_price, cost_basis, current_price, market_value, unrealized_pl)
        SELECT p_account, u->>0, u->>1, u->>2, u->>3, (u->>4)::numeric, (u->>5)::date, (u->>6)::numeric,
               (u->>7)::numeric, (u->>8)::numeric, (u->>9)::numeric, (u->>10)::numeric, (u->>11)::numeric,
               (u->>12)::numeric, (u->>13)::numeric
          FROM given
         WHERE NOT given.fresh
        ON CONFLICT (account_id, symbol) DO UPDATE
           SET asset_class = EXCLUDED.asset_class,
               underlying = EXCLUDED.underlying,
               option_type = EXCLUDED.option_type,
               strike = EXCLUDED.strike,
               expiration = EXCLUDED.expiration,
               multiplier = EXCLUDED.multiplier,
               quantity = EXCLUDED.quantity,
               qty_available = EXCLUDED.qty_available,
               avg_entry_price = EXCLUDED.avg_entry_price,
               cost_basis = EXCLUDED.cost_basis,
               current_price = COALESCE(EXCLUDED.current_price, p.current_price),
               market_value = COALESCE(EXCLUDED.market_value, p.market_value),
               unrealized_pl = COALESCE(EXCLUDED.unrealized_pl, p.unrealized_pl),
               updated_at = now()
        RETURNING 1
    ), gone AS (
        DELETE FROM portfolio_positions
         WHERE account_id = p_account AND symbol = ANY(p_deletes)
        RETURNING 1
    ), ev AS (
        INSERT INTO position_events (account_id, symbol, kind, old_quantity, new_quantity, at)
        SELECT p_account, e->>0, e->>1, (e->>2)::numeric, (e->>3)::numeric, now()
          FROM jsonb_array_elements(convert_from(p_events, 'UTF8')::jsonb) AS e
        RETURNING 1
    ), snap AS (
        INSERT INTO account_snapshots (account_id, taken_at, equity, cash, buying_power,
                                       long_market_value, short_market_value)
        SELECT p_account, now(), (p_balances).equity, (p_balances).cash, (p_balances).buying_power,
               (p_balances).long_market_value, (p_balances).short_market_value
         WHERE v_snapshot
        RETURNING 1
    ), acct AS (
        UPDATE accounts
           SET last_synced_at = now(),
               broker_account_id = CASE WHEN v_broker THEN p_broker_id ELSE broker_account_id END,
               last_error = CASE WHEN last_error LIKE 'accountSync: %' THEN NULL ELSE last_error END,
               updated_at = CASE WHEN v_broker THEN now() ELSE updated_at END
         WHERE id = p_account
        RETURNING 1
    ), notes AS (
        SELECT pg_notify('syncd_events', payload) FROM unnest(v_payloads) AS payload
    )
    -- (acct runs though nothing reads it: a data-modifying WITH always runs, once, to completion)
    SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM up), (SELECT count(*) FROM gone), (SELECT count(*) FROM ev),
           (SELECT count(*) FROM snap), (SELECT count(*) FROM notes)
      INTO v_up, v_gone, v_ev, v_snap, v_notes;

    -- the answer's fingerprint beside the fingerprints of the state just written (0019): a row
    -- monitorCycle quotes after this makes them stale, never wrong (the next pass compares in full)
    UPDATE accounts
       SET sync_answer = p_fingerprint,
           sync_seen = p_fingerprint,
           sync_positions_state = COALESCE(p_state_as_read, account_positions_state(p_account)),
           sync_account_state = account_balances_state(p_account),
           sync_positions = p_positions
     WHERE id = p_account;
    RETURN QUERY SELECT false, v_up, v_gone, v_ev, v_snap, v_notes, v_snapshot, v_broker,
                        EXISTS (SELECT 1 FROM expiry_candidate_trades(p_account, p_pending));
END
$$;
