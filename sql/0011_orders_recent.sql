-- tradeCycle asks the broker again for orders recorded terminal in the last minutes
-- (trade_working_order_ids), so a wrong final answer is corrected by the next truthful one:
-- this index finds an account's recently written top-level orders without a scan.
CREATE INDEX orders_recent ON orders (account_id, updated_at) WHERE parent_id IS NULL;
