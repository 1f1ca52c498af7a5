-- Projects group a user's compose apps; an app lives in a directory of one of
-- their servers. `stops_at` is the durable auto-stop time of a running app (NULL:
-- never, or not running); `app_runs` keeps each start and stop with its output.
CREATE TABLE projects (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX projects_user_name ON projects (user_id, lower(name));

CREATE TABLE apps (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id UUID NOT NULL REFERENCES projects (id),
    server_id UUID NOT NULL REFERENCES servers (id),
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    compose_file TEXT,
    url TEXT,
    auto_stop_minutes INTEGER NOT NULL DEFAULT 60 CHECK (auto_stop_minutes BETWEEN 0 AND 525600),
    status TEXT NOT NULL DEFAULT 'stopped'
        CHECK (status IN ('stopped', 'starting', 'running', 'stopping', 'error')),
    status_message TEXT,
    stops_at TIMESTAMPTZ,
    services_running INTEGER,
    last_checked TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX apps_project_name ON apps (project_id, lower(name));
CREATE INDEX apps_server ON apps (server_id);
CREATE INDEX apps_due ON apps (stops_at) WHERE stops_at IS NOT NULL;

CREATE TABLE app_runs (
    id UUID PRIMARY KEY,
    app_id UUID NOT NULL REFERENCES apps (id) ON DELETE CASCADE,
    action TEXT NOT NULL CHECK (action IN ('start', 'stop', 'auto_stop')),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    exit_status INTEGER,
    output TEXT NOT NULL DEFAULT '',
    error TEXT
);
CREATE INDEX app_runs_app ON app_runs (app_id, started_at DESC);
