-- name: account_sync_lock
-- Serialises accountSync passes over one account (two replicas, or sync-once beside the daemon).
-- $1 lock class (syncd.db.locks.LockClass.ACCOUNT), $2 account id.
SELECT pg_advisory_xact_lock($1::int, ($2::bigint % 2147483647)::int);

-- name: account_sync_stored_positions
-- The mirror as accountSync compares it: only the columns accountSync owns, plus whether
-- monitorCycle has quoted the row yet (until then the broker's marks are accountSync's too).
-- ``state``: with $2 true, the rows' fingerprint (0019), read in the same statement, so of these
-- very rows (else NULL). $1 account id, $2 whether to fingerprint them.
SELECT symbol, asset_class, underlying, option_type, strike, expiration, multiplier,
       quantity, qty_available, avg_entry_price, cost_basis,
       current_price, market_value, unrealized_pl,
       quote_at IS NULL AS marks_ours,
       CASE WHEN $2::boolean THEN (SELECT account_positions_state($1)) END AS state
  FROM portfolio_positions
 WHERE account_id = $1;

-- name: account_sync_stored_account
-- The account's broker id and its latest balances snapshot (NULLs when there is none yet).
-- ``state``: with $2 true, their fingerprint (0019), read in the same statement (else NULL).
-- ``positions_state``: with $3 true, the stored positions' fingerprint (0020; else NULL).
SELECT a.broker_account_id, s.equity, s.cash, s.buying_power, s.long_market_value, s.short_market_value,
       CASE WHEN $2::boolean THEN account_balances_state(a.id) END AS state,
       CASE WHEN $3::boolean THEN account_positions_state(a.id) END AS positions_state
  FROM accounts a
  LEFT JOIN LATERAL latest_account_snapshot(a.id) s ON true  -- 0019
 WHERE a.id = $1;

-- name: account_sync_apply
-- Everything one pass changes, in one statement (0022, account_sync_apply): the account's lock,
-- then, unless the stored positions' fingerprint is no longer $3 (then ``stale``, nothing
-- written), changed positions upserted, vanished ones deleted, position events inserted, a
-- balances snapshot when the balances differ from the latest, the account marked synced, the
-- NOTIFY syncd_events payloads sent (at commit, and only then), the answer's fingerprint recorded.
-- $1 account id, $2 lock class (syncd.db.locks.LockClass.ACCOUNT), $3 the positions' fingerprint
-- compared against (NULL: no check: the caller holds the lock and compared under it)
-- $4 rows to upsert: UTF-8 JSON (bytea), an array of arrays, each a PositionRow's first 14
--    fields in order (symbol, asset_class, underlying, option_type, strike, expiration,
--    multiplier, quantity, qty_available, avg_entry_price, cost_basis, current_price,
--    market_value, unrealized_pl), then true when the row is new (no stored row of its symbol:
--    inserted without a conflict probe, 0023); decimals as strings, the date ISO, NULLs null
-- $5 symbols to delete
-- $6 events: UTF-8 JSON (bytea), an array of [symbol, kind, old_quantity, new_quantity]
-- ($4 and $6 are JSON rather than arrays of position_row / position_event_row: asyncpg's binary
-- numeric encoder took a microsecond per decimal, most of the client's CPU in a first sync;
-- Postgres reads either in the same time. tests/integration/test_named_rows.py checks each
-- field lands in the column of its name.)
-- $7 the broker's balances (balances_row), $8 its account id (NULL keeps the stored one)
-- $9 the positions' payloads, $10 the account's (sent too with a snapshot or a new broker id)
-- $11 the answer's fingerprint (NULL: none), $12 its number of positions, $13 the pending
-- close_reasons (text[], for ``expiry``), $14 the positions' fingerprint to record when no row
-- is written (NULL: computed after the write)
SELECT stale, upserted, deleted, events, snapshots, notified, snapshot, broker_changed, expiry
  FROM account_sync_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14);

-- name: account_sync_unchanged
-- For each of several accounts at once (syncd.db.grouped: the passes waiting meanwhile), in
-- the order given (``ord``): the broker's answer is the one recorded, over the stored state it
-- was found to match (0019): the pass is idle without decoding or comparing, and the account is
-- marked synced (``positions``: how many). Otherwise ``positions`` is NULL, nothing is written
-- for that account, and its pass compares in full, with what this statement read of the account
-- (as account_sync_stored_account reads it: ``broker_account_id``, the latest snapshot's
-- balances, and with ``seen``, their ``state``), so the comparison needs no other read of it, and
-- the stored positions' fingerprint (``positions_state``: when it is the one of rows this process
-- last found equal to the broker's, and the answer's positions are those again, the comparison
-- needs no read of the rows either).
-- ``seen``: the answer is the one the pass before saw (then the comparison records it).
-- ``expiry``: whether expiry settlement has a trade to look at (for a pass that writes nothing).
-- $1 account ids (bigint[]), $2 the answers' fingerprints (bytea[], one per account),
-- $3 the pending close_reasons (text[]).
WITH ask AS (
    SELECT t.id, t.answer, t.ord
      FROM unnest($1::bigint[], $2::bytea[]) WITH ORDINALITY AS t(id, answer, ord)
), hit AS (
    UPDATE accounts a
       SET last_synced_at = now(),
           last_error = CASE WHEN a.last_error LIKE 'accountSync: %' THEN NULL ELSE a.last_error END
      FROM ask
     WHERE a.id = ask.id
       AND a.sync_answer = ask.answer
       AND a.sync_positions_state = account_positions_state(a.id)
       AND a.sync_account_state = account_balances_state(a.id)
    RETURNING a.id, a.sync_answer, a.sync_positions
)
SELECT ask.ord,
       hit.sync_positions AS positions,
       EXISTS (SELECT 1 FROM expiry_candidate_trades(ask.id, $3::text[])) AS expiry,
       COALESCE(a.sync_seen = ask.answer, false) AS seen,
       a.broker_account_id, s.equity, s.cash, s.buying_power, s.long_market_value, s.short_market_value,
       CASE WHEN hit.sync_positions IS NULL AND a.sync_seen = ask.answer
            THEN account_balances_state(ask.id) END AS state,
       CASE WHEN hit.sync_positions IS NULL THEN account_positions_state(ask.id) END AS positions_state
  FROM ask
  LEFT JOIN hit ON hit.id = ask.id AND hit.sync_answer = ask.answer  -- an account asked twice: each its own answer
  LEFT JOIN accounts a ON a.id = ask.id
  LEFT JOIN LATERAL latest_account_snapshot(ask.id) s ON true
 ORDER BY ask.ord;

-- name: account_sync_mark_synced
-- An idle pass: the mirror already equals the broker's answer; only the time is new.
-- $2, the answer's fingerprint (NULL: none), becomes ``sync_seen``. With $3 and $4, the states it
-- was compared with (read with the rows), it is recorded as ``sync_answer`` -- only if the stored
-- state still has them: otherwise someone changed it since, and what was recorded stays.
-- $1 account id, $2 fingerprint, $3 positions state, $4 account state (NULL: do not record),
-- $5 number of positions.
-- ``c`` is MATERIALIZED: inlined, its expression would be evaluated once per reference (four).
WITH c AS MATERIALIZED (
    SELECT $2::bytea IS NOT NULL AND $3::text IS NOT NULL AND $4::text IS NOT NULL
           AND account_positions_state($1) = $3::text AND account_balances_state($1) = $4::text AS still
)
UPDATE accounts a
   SET last_synced_at = now(),
       last_error = CASE WHEN a.last_error LIKE 'accountSync: %' THEN NULL ELSE a.last_error END,
       sync_seen = $2::bytea,
       sync_answer = CASE WHEN c.still THEN $2::bytea ELSE a.sync_answer END,
       sync_positions_state = CASE WHEN c.still THEN $3::text ELSE a.sync_positions_state END,
       sync_account_state = CASE WHEN c.still THEN $4::text ELSE a.sync_account_state END,
       sync_positions = CASE WHEN c.still THEN $5::integer ELSE a.sync_positions END
  FROM c
 WHERE a.id = $1;

-- name: account_sync_notify
-- Change notifications (the importer's); Postgres delivers them when, and only if, the
-- transaction commits. $1 JSON payloads, each well under the 8,000-byte limit.
SELECT pg_notify('syncd_events', payload) FROM unnest($1::text[]) AS payload;

-- name: import_lock
-- Serialises importers of one account. $1 lock class (syncd.db.locks.LockClass.IMPORT), $2 account id.
SELECT pg_advisory_xact_lock($1::int, ($2::bigint % 2147483647)::int);

-- name: import_untracked_positions
-- What of each position of an account no live trade (pending/open/closing) claims. A position
-- no trade covers (neither through one of its legs, nor, for a trade without legs, through its
-- symbol) comes whole. A position covered only by open trades that own their fills (an entry
-- order linked: they never grow to what the account holds) comes as its surplus over their
-- claims, on the position's side, once those trades are settled: nothing of theirs working or
-- queued, and the positions synced after their last fill with a margin ($2). So does one covered
-- by several trades, with a fill record or not (none of them follows the broker: an import next
-- to a syncd trade keeps its quantity). A position whose only claim is a trade without a fill
-- record (it follows the broker) or that a pending trade covers comes not at all; nor does one
-- a trade just ended on (an order of it filled or changed within the margin of the last sync:
-- the mirror may still show what its close sold).
-- $1 account id, $2 margin (interval)
WITH claims AS (
    SELECT l.symbol,
           sum(CASE WHEN l.side = 'buy' THEN 1 ELSE -1 END * l.trade_quantity * l.ratio) AS claimed,
           (bool_and(l.own_fills) OR count(DISTINCT l.trade_id) > 1)
           AND bool_and(NOT EXISTS (
                          SELECT 1 FROM orders o
                           WHERE o.trade_id = l.trade_id AND o.parent_id IS NULL
                             AND (order_is_working(o.status)
                                  OR COALESCE(o.filled_at, o.updated_at) > a.last_synced_at - $2::interval))
                    AND NOT EXISTS (
                          SELECT 1 FROM order_requests r
                           WHERE r.trade_id = l.trade_id AND r.state IN ('queued', 'submitting'))
                    AND a.last_synced_at IS NOT NULL) AS settled
      FROM v_live_trade_legs l
      JOIN accounts a ON a.id = l.account_id
     WHERE l.account_id = $1
     GROUP BY l.symbol
), pending AS (
    SELECT DISTINCT COALESCE(l.symbol, t.symbol) AS symbol
      FROM trades t
      LEFT JOIN trade_legs l ON l.trade_id = t.id
     WHERE t.account_id = $1 AND t.status = 'pending'
), ended AS (
    SELECT DISTINCT COALESCE(l.symbol, t.symbol) AS symbol
      FROM trades t
      JOIN accounts a ON a.id = t.account_id
      LEFT JOIN trade_legs l ON l.trade_id = t.id
     WHERE t.account_id = $1 AND t.status IN ('closed', 'cancelled', 'rejected')
       AND EXISTS (
             SELECT 1 FROM orders o
              WHERE o.trade_id = t.id AND o.parent_id IS NULL
                AND (a.last_synced_at IS NULL
                     OR COALESCE(o.filled_at, o.updated_at) > a.last_synced_at - $2::interval))
)
SELECT p.symbol, p.asset_class, p.underlying, p.option_type, p.strike, p.expiration, p.multiplier,
       CASE WHEN c.symbol IS NULL THEN p.quantity ELSE p.quantity - c.claimed END AS quantity,
       p.avg_entry_price, p.first_seen_at
  FROM portfolio_positions p
  LEFT JOIN claims c ON c.symbol = p.symbol
 WHERE p.account_id = $1
   AND p.quantity <> 0
   AND NOT EXISTS (SELECT 1 FROM pending pe WHERE pe.symbol = p.symbol)
   AND NOT EXISTS (SELECT 1 FROM ended e WHERE e.symbol = p.symbol)
   AND (c.symbol IS NULL
        OR (c.settled AND sign(p.quantity - c.claimed) = sign(p.quantity)
            AND abs(p.quantity - c.claimed) <= abs(p.quantity)))
 ORDER BY p.symbol;

-- name: import_insert_trades
-- Imported trades and their legs in one statement. Trade ids are drawn first so legs can
-- name them. Returns each new trade's id with its ord.
-- $1 account id; trades: $2 (import_trade_row[], 0012: by attribute name), ord 1-based and distinct;
-- legs: $3 (import_leg_row[], 0012), each naming its trade by ord
WITH input AS MATERIALIZED (
    SELECT nextval(pg_get_serial_sequence('trades', 'id')) AS id, t.ord, t.symbol, t.strategy, t.quantity,
           t.entry_price, t.opened_at
      FROM unnest($2::import_trade_row[]) AS t
), ins AS (
    INSERT INTO trades (id, account_id, symbol, strategy, status, requested_quantity, quantity,
                        entry_price, broker_fill_price, source, opened_at)
    SELECT id, $1, symbol, strategy, 'open', quantity, quantity, entry_price, entry_price, 'import', opened_at
      FROM input
    RETURNING id
), legs AS (
    INSERT INTO trade_legs (trade_id, leg_index, symbol, side, ratio)
    SELECT i.id, l.leg_index, l.symbol, l.side, l.ratio
      FROM unnest($3::import_leg_row[]) AS l
      JOIN input i ON i.ord = l.ord
    RETURNING 1
)
SELECT i.id, i.ord, (SELECT count(*) FROM ins) AS trades, (SELECT count(*) FROM legs) AS legs
  FROM input i
 ORDER BY i.ord;
