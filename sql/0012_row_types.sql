-- Row types of the bulk writes: syncd passes each write's rows as ONE array of one of these
-- composite types, built from Python mappings by attribute name (asyncpg encodes a mapping
-- by the type's attribute names, and rejects a name the type does not have), so reordering
-- a column here or in Python cannot shift a value into the wrong column. Values travel in
-- binary as before: numeric exact, timestamps timestamptz, NULLs kept. Nothing is stored in
-- these types; they only describe the arguments of the named queries in sql/queries.

-- account_sync_write: a position to upsert (the columns accountSync owns, and the broker's marks).
CREATE TYPE position_row AS (
    symbol text,
    asset_class text,
    underlying text,
    option_type text,
    strike numeric,
    expiration date,
    multiplier numeric,
    quantity numeric,
    qty_available numeric,
    avg_entry_price numeric,
    cost_basis numeric,
    current_price numeric,
    market_value numeric,
    unrealized_pl numeric
);

-- account_sync_write: a position event.
CREATE TYPE position_event_row AS (
    symbol text,
    kind text,
    old_quantity numeric,
    new_quantity numeric
);

-- account_sync_write: a balances snapshot.
CREATE TYPE balances_row AS (
    equity numeric,
    cash numeric,
    buying_power numeric,
    long_market_value numeric,
    short_market_value numeric
);

-- trade_upsert_orders: a top-level order.
CREATE TYPE order_row AS (
    broker_order_id text,
    client_order_id text,
    trade_id bigint,
    role text,
    symbol text,
    asset_class text,
    side text,
    intent text,
    type text,
    order_class text,
    time_in_force text,
    qty numeric,
    ratio_qty int,
    filled_qty numeric,
    filled_avg_price numeric,
    limit_price numeric,
    status text,
    reject_reason text,
    submitted_at timestamptz,
    filled_at timestamptz,
    canceled_at timestamptz
);

-- trade_upsert_orders: a leg of a multi-leg order, named by its parent's broker id.
CREATE TYPE order_leg_row AS (
    parent_broker_order_id text,
    broker_order_id text,
    client_order_id text,
    symbol text,
    asset_class text,
    side text,
    intent text,
    type text,
    order_class text,
    time_in_force text,
    qty numeric,
    ratio_qty int,
    filled_qty numeric,
    filled_avg_price numeric,
    limit_price numeric,
    status text,
    reject_reason text,
    submitted_at timestamptz,
    filled_at timestamptz,
    canceled_at timestamptz
);

-- trade_insert_order_events: an order event.
CREATE TYPE order_event_row AS (
    order_id bigint,
    event text,
    qty numeric,
    price numeric,
    filled_qty numeric,
    status text,
    execution_id text,
    at timestamptz,
    source text
);

-- trade_update_trades: a re-derived trade.
CREATE TYPE trade_row AS (
    id bigint,
    status text,
    quantity numeric,
    entry_price numeric,
    broker_fill_price numeric,
    exit_price numeric,
    realized_pnl numeric,
    close_reason text,
    opened_at timestamptz,
    closed_at timestamptz
);

-- import_insert_trades: an imported trade, numbered by ord (1-based).
CREATE TYPE import_trade_row AS (
    ord bigint,
    symbol text,
    strategy text,
    quantity numeric,
    entry_price numeric,
    opened_at timestamptz
);

-- import_insert_trades: a leg of an imported trade, naming its trade by ord.
CREATE TYPE import_leg_row AS (
    ord bigint,
    leg_index int,
    symbol text,
    side text,
    ratio int
);
