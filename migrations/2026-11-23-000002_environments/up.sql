-- Templates, environments and their provisioning logs.

-- Environment templates: loaded from templates/*.yaml at start-up (upsert by name),
-- managed by admins through the API afterwards.
CREATE TABLE templates (
    id uuid PRIMARY KEY,
    name text NOT NULL,
    display_name text NOT NULL,
    description text NOT NULL,
    category text NOT NULL
        CHECK (category IN ('programming_language', 'framework', 'database', 'devops', 'operating_system')),
    tags jsonb NOT NULL DEFAULT '[]',
    docker_image text NOT NULL,
    default_resources jsonb NOT NULL DEFAULT '{}',
    environment_variables jsonb NOT NULL DEFAULT '{}',
    startup_commands jsonb NOT NULL DEFAULT '[]',
    -- The bootstrap script run as the machine's cloud-init, with stage markers.
    bootstrap text NOT NULL,
    -- What a cloud machine needs later: apt packages and extra cloud-config.
    packages jsonb NOT NULL DEFAULT '[]',
    cloud_init jsonb NOT NULL DEFAULT '{}',
    default_port integer,
    documentation_url text,
    icon_url text,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'deprecated', 'beta')),
    version text NOT NULL DEFAULT '1.0.0',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX templates_name_key ON templates (lower(name));

CREATE TABLE environments (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name text NOT NULL,
    -- Provider-safe name derived from `name`.
    slug text NOT NULL,
    template_id uuid NOT NULL REFERENCES templates (id),
    provider text NOT NULL,
    region text NOT NULL,
    size text NOT NULL,
    -- What the app knows: creating, running, stopped, terminated, error.
    status text NOT NULL
        CHECK (status IN ('creating', 'running', 'stopped', 'terminated', 'error')),
    -- The detail behind the status (queued, provisioning, installing, ready, ...).
    phase text NOT NULL,
    progress integer NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    status_message text,
    resource_limits jsonb NOT NULL DEFAULT '{}',
    environment_variables jsonb NOT NULL DEFAULT '{}',
    -- The machine: where it answers SSH, its pinned host key, our key for it
    -- (private halves encrypted with AES-256-GCM under the server key).
    ip_address text,
    ssh_port integer,
    ssh_user text,
    host_public_key text,
    host_private_key bytea,
    user_public_key text,
    user_private_key bytea,
    -- The provider's own id for the machine (a droplet id, a local directory).
    provider_ref text,
    -- The highest provisioning-log line stored, so a resumed tail skips what it has.
    log_seq bigint NOT NULL DEFAULT 0,
    -- Which server process drives this environment, until when.
    lease_owner uuid,
    lease_expires_at timestamptz,
    started_at timestamptz,
    stopped_at timestamptz,
    last_accessed timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
CREATE INDEX environments_user_id_idx ON environments (user_id);
-- Names are unique per user among environments that still exist.
CREATE UNIQUE INDEX environments_user_name_key
    ON environments (user_id, lower(name)) WHERE deleted_at IS NULL;

-- Provisioning-log lines; `seq` is the line number in the machine's log.
CREATE TABLE environment_logs (
    environment_id uuid NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    seq bigint NOT NULL,
    line text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (environment_id, seq)
);
