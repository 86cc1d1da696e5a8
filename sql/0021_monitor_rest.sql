-- 0021: what monitorCycle last found, kept in the database, so that a pass over an account where
-- nothing changed does no work -- in any process, a new `syncd sync-once` included (issue 14).
--
-- accounts.monitor_rest (jsonb, NULL: nothing kept) is written by monitorCycle only:
--   seen    digest of the quotes answer and of the held rows' versions as the pass left them:
--           the same answer again over the same rows is at rest (no decode, nothing sent);
--   quoted  how many held symbols that answer quoted;
--   judged  digest of every input of the exit rules (below), today's date, the exit settings,
--           the schema's version and the judging code, when judging them queued nothing: the
--           same digest again judges alike, so the trades are not read (NULL: judge);
--   trades, monitorable, blocked   what that judgement found (the pass reports them again).
--
-- The exit rules' inputs are the rows v_trade_leg_positions and v_trade_exits_working read:
-- portfolio_positions (held rows by their versions, xmin; rows held at 0 by the hash in
-- monitor_pass_state), and trades, trade_legs, orders and order_requests, whose every change is
-- noted below in trade_input_changes. Only a change to a trade's marks alone (current_price,
-- floating_pnl, updated_at: monitorCycle's own output, never an input of a rule) is not noted.

ALTER TABLE accounts ADD COLUMN monitor_rest jsonb;

-- One row per account and transaction that changed an input of the account's exit rules. A
-- new committed row raises the account's count (monitor_pass_state); rows are never updated, so
-- no writer waits on another for them. Housekeeping deletes rows older than an hour
-- (trade_input_changes_purge) and, in the same statement, adds their count and hash sum to the
-- account's row of trade_input_purged: what monitorCycle compares (rows plus purged) only ever
-- grows, so no purge can bring back a value a judgement was kept with.
CREATE TABLE trade_input_changes (
    account_id bigint NOT NULL,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, xid)
);
CREATE INDEX trade_input_changes_at ON trade_input_changes (at);

CREATE TABLE trade_input_purged (
    account_id bigint PRIMARY KEY,
    n          bigint NOT NULL,
    h          numeric NOT NULL
);

-- The tables are named through TG_TABLE_SCHEMA (the schema of the table changed), so a hand
-- edit under any search_path is noted, and a renamed schema keeps working.
CREATE FUNCTION note_trade_inputs() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    note constant text := format('INSERT INTO %I.trade_input_changes (account_id) VALUES ($1) ON CONFLICT DO NOTHING',
                                 TG_TABLE_SCHEMA);
    acct bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        EXECUTE format('INSERT INTO %1$I.trade_input_changes (account_id) SELECT id FROM %1$I.accounts
                        ON CONFLICT DO NOTHING', TG_TABLE_SCHEMA);
    ELSIF TG_TABLE_NAME = 'trade_legs' THEN
        -- a leg's account is its trade's (a leg deleted with its trade: the trade's row noted it)
        IF TG_OP <> 'INSERT' THEN
            EXECUTE format('SELECT account_id FROM %I.trades WHERE id = $1', TG_TABLE_SCHEMA) INTO acct USING OLD.trade_id;
            IF acct IS NOT NULL THEN
                EXECUTE note USING acct;
            END IF;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            EXECUTE format('SELECT account_id FROM %I.trades WHERE id = $1', TG_TABLE_SCHEMA) INTO acct USING NEW.trade_id;
            IF acct IS NOT NULL THEN
                EXECUTE note USING acct;
            END IF;
        END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN
            EXECUTE note USING OLD.account_id;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            EXECUTE note USING NEW.account_id;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER trades_inputs AFTER INSERT OR DELETE ON trades
    FOR EACH ROW EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER trades_inputs_update AFTER UPDATE ON trades
    FOR EACH ROW
    WHEN (to_jsonb(OLD) - 'current_price' - 'floating_pnl' - 'updated_at'
          IS DISTINCT FROM to_jsonb(NEW) - 'current_price' - 'floating_pnl' - 'updated_at')
    EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER trade_legs_inputs AFTER INSERT OR UPDATE OR DELETE ON trade_legs
    FOR EACH ROW EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER orders_inputs AFTER INSERT OR UPDATE OR DELETE ON orders
    FOR EACH ROW EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER order_requests_inputs AFTER INSERT OR UPDATE OR DELETE ON order_requests
    FOR EACH ROW EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER trades_inputs_truncate AFTER TRUNCATE ON trades
    FOR EACH STATEMENT EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER trade_legs_inputs_truncate AFTER TRUNCATE ON trade_legs
    FOR EACH STATEMENT EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER orders_inputs_truncate AFTER TRUNCATE ON orders
    FOR EACH STATEMENT EXECUTE FUNCTION note_trade_inputs();
CREATE TRIGGER order_requests_inputs_truncate AFTER TRUNCATE ON order_requests
    FOR EACH STATEMENT EXECUTE FUNCTION note_trade_inputs();
