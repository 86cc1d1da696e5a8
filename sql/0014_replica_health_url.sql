-- Where each replica's health listener really listens (issue 13, item 3).
--
-- `health.listen` may say port 0 (any free port) or a wildcard host; the address the
-- listener actually bound is known only to the running process. Each replica writes it
-- here with every heartbeat, so `syncd health` asks a running daemon where it is instead
-- of guessing 9108. NULL: no listener (health.listen = "") or a syncd without this migration.

ALTER TABLE replicas ADD COLUMN health_url text;
