-- The clients of each tmux terminal session, per server process: a session's
-- clients on several processes are counted together in `welcome`. Each process
-- renews its rows while it has clients; rows not renewed (a process that died) are
-- not counted and are swept.
CREATE TABLE terminal_clients (
    environment_id UUID NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    session TEXT NOT NULL,
    process UUID NOT NULL,
    clients INTEGER NOT NULL CHECK (clients > 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, session, process)
);
