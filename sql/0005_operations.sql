-- syncd operations: replicas, account leases, and more detail in task_health.
--
-- Several `syncd run` processes may share one database. Each registers itself in
-- `replicas` and renews that row on every lease heartbeat; each account is worked on
-- by at most one replica at a time: the holder of its row in `account_leases`, valid
-- until `expires_at` (renewed by the holder's heartbeat; a replica that dies stops
-- renewing and its leases lapse after the lease TTL).

CREATE TABLE replicas (
    instance     text PRIMARY KEY,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX replicas_expires ON replicas (expires_at);

CREATE TABLE account_leases (
    account_id  bigint PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    holder      text NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX account_leases_holder ON account_leases (holder);

-- task_health: `last_ok_at` is the end of the task's last completed pass (the loop
-- works; account failures are in account_health), `last_error` and
-- `consecutive_failures` are the loop's own failures (a crash, the database gone).
-- Added here: when this instance's task loop began (staleness before its first
-- pass), its current cadence, and what its last pass covered.
ALTER TABLE task_health
    ADD COLUMN started_at      timestamptz,
    ADD COLUMN interval_s      double precision,
    ADD COLUMN accounts_total  integer NOT NULL DEFAULT 0,
    ADD COLUMN accounts_failed integer NOT NULL DEFAULT 0;
