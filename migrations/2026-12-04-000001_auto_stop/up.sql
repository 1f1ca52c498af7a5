-- Idle auto-stop. `last_accessed` (the app's field) is the time of the last
-- activity; `environment_activity` says what it was and holds a keep-awake's end;
-- `auto_stop_minutes` is the environment's own idle timeout (NULL: its plan's;
-- 0: never).
ALTER TABLE environments
    ADD COLUMN auto_stop_minutes INTEGER CHECK (auto_stop_minutes BETWEEN 0 AND 525600);

CREATE TABLE environment_activity (
    environment_id UUID PRIMARY KEY REFERENCES environments (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    session TEXT,
    client_address TEXT,
    awake_until TIMESTAMPTZ
);

-- Environments that exist when this lands get a whole timeout from now, not a stop
-- at the first check.
UPDATE environments SET last_accessed = now() WHERE deleted_at IS NULL;
