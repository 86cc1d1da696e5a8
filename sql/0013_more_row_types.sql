-- Row types of the remaining bulk writes (see 0012): each write passes its rows as ONE array
-- of one of these composite types, built from Python mappings by attribute name, instead of
-- parallel arrays matched by position. Nothing is stored in these types.

-- monitor_write_quotes: a held symbol's quote (NULLs: not quoted / keep).
CREATE TYPE quote_row AS (
    symbol text,
    bid numeric,
    ask numeric,
    last numeric,
    price numeric,
    quote_at timestamptz,
    delta numeric,
    gamma numeric,
    theta numeric,
    vega numeric,
    iv numeric
);

-- monitor_write_trades: a trade's new marks.
CREATE TYPE trade_mark_row AS (
    id bigint,
    current_price numeric,
    floating_pnl numeric
);

-- monitor_queue_exits: an exit rule that fired.
CREATE TYPE trade_exit_row AS (
    trade_id bigint,
    reason text,
    qty numeric
);

-- trade_set_quantities: a quantity reconciled with the broker's positions.
CREATE TYPE trade_quantity_row AS (
    id bigint,
    quantity numeric
);

-- outbox_insert_legs: a leg of a requested trade.
CREATE TYPE trade_leg_row AS (
    leg_index int,
    symbol text,
    side text,
    ratio int
);

-- upsert_accounts: a configured account.
CREATE TYPE account_row AS (
    name text,
    broker text,
    broker_account_id text,
    paper boolean
);

-- record_passes: one account's pass of one task; stats is JSON text (asyncpg sends a composite
-- in binary and has no binary codec for jsonb when JSON is decoded in Python), cast to jsonb there.
CREATE TYPE pass_row AS (
    account_id bigint,
    started_at timestamptz,
    finished_at timestamptz,
    ok boolean,
    error text,
    stats text
);
