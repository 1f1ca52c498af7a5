-- The audit log: who did what to which resource, from where, and how it ended.
-- Rows are only ever inserted (by the server's audit writer) and read by admins.

CREATE TABLE audit_events (
    id uuid PRIMARY KEY,
    -- Who acted; NULL for an unknown account (a failed login) or a deleted user.
    user_id uuid REFERENCES users (id) ON DELETE SET NULL,
    -- A stable dotted name such as `auth.login` or `environment.create`.
    action text NOT NULL,
    resource_type text NOT NULL,
    resource_id text,
    details jsonb NOT NULL DEFAULT '{}',
    -- The client's address as the server saw it (behind trusted proxies: the
    -- forwarded one); text, like login_failures.client_ip.
    ip text,
    user_agent text,
    outcome text NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One index per filter of `GET /api/v1/admin/audit`, each ending in the listing
-- order (newest first) so a filtered page is read straight off the index.
CREATE INDEX audit_events_created_at_idx ON audit_events (created_at DESC, id DESC);
CREATE INDEX audit_events_user_idx ON audit_events (user_id, created_at DESC);
CREATE INDEX audit_events_action_idx ON audit_events (action, created_at DESC);
CREATE INDEX audit_events_resource_idx
    ON audit_events (resource_type, resource_id, created_at DESC);
