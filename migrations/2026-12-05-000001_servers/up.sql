-- Users' own servers: SSH hosts they registered. The client key is sealed
-- (AES-256-GCM under SECRET_KEY, as environments' keys are); `host_key` is the
-- host key its owner confirmed, `presented_host_key` one the server presented
-- that nobody has confirmed (first contact, or a changed key). `facts` is what
-- the last status check found.
CREATE TABLE servers (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    username TEXT NOT NULL,
    auth_type TEXT NOT NULL CHECK (auth_type IN ('generated', 'private_key')),
    private_key BYTEA NOT NULL,
    public_key TEXT NOT NULL,
    host_key TEXT,
    presented_host_key TEXT,
    status TEXT NOT NULL DEFAULT 'pending_trust',
    status_message TEXT,
    last_checked TIMESTAMPTZ,
    facts JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX servers_user_name ON servers (user_id, lower(name));
CREATE INDEX servers_user ON servers (user_id, created_at);
