-- 0021: what monitorCycle last found, kept in the database, so that a pass over an account where
-- nothing changed does no work -- in any process, a new `syncd sync-once` included (issue 14).
--
-- accounts.monitor_rest (jsonb, NULL: nothing kept) is written by monitorCycle only:
--   seen    digest of the quotes answer and of the held rows' versions as the pass left them:
--           the same answer again over the same rows is at rest (no decode, nothing sent);
--   quoted  how many held symbols that answer quoted;
--   judged  digest of every input of the exit rules (below), today's date and the exit
--           settings, when judging them queued nothing: the same digest again judges alike,
--           so the trades are not read (NULL: judge);
--   trades, monitorable, blocked   what that judgement found (the pass reports them again).
--
-- The exit rules' inputs are the rows v_trade_leg_positions and v_trade_exits_working read:
-- portfolio_positions (held rows by their versions, xmin; rows held at 0 by the hash in
-- monitor_pass_state), and trades, trade_legs, orders and order_requests, whose every change is
-- noted below in trade_input_changes. Only a change to a trade's marks alone (current_price,
-- floating_pnl, updated_at: monitorCycle's own output, never an input of a rule) is not noted.

ALTER TABLE accounts ADD COLUMN monitor_rest jsonb;

-- One row per account and transaction that changed an input of the account's exit rules. A
-- new committed row changes the account's count and hash sum (monitor_pass_state); rows are
-- never updated, so no writer waits on another for them. Housekeeping deletes rows older than
-- an hour (trade_input_changes_purge): that too changes the sums, and costs one judgement.
CREATE TABLE trade_input_changes (
    account_id bigint NOT NULL,
    xid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, xid)
);
CREATE INDEX trade_input_changes_at ON trade_input_changes (at);

CREATE FUNCTION note_trade_inputs() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        INSERT INTO trade_input_changes (account_id) SELECT id FROM accounts ON CONFLICT DO NOTHING;
    ELSIF TG_TABLE_NAME = 'trade_legs' THEN
        -- a leg's account is its trade's (a leg deleted with its trade: the trade's row noted it)
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO trade_input_changes (account_id)
            SELECT t.account_id FROM trades t WHERE t.id = OLD.trade_id ON CONFLICT DO NOTHING;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO trade_input_changes (account_id)
            SELECT t.account_id FROM trades t WHERE t.id = NEW.trade_id ON CONFLICT DO NOTHING;
        END IF;
    ELSE
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO trade_input_changes (account_id) VALUES (OLD.account_id) ON CONFLICT DO NOTHING;
        END IF;
        IF TG_OP <> 'DELETE' THEN
            INSERT INTO trade_input_changes (account_id) VALUES (NEW.account_id) ON CONFLICT DO NOTHING;
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
