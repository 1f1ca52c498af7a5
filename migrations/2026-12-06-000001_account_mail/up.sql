-- Accounts people can recover: e-mail verification codes, password resets, deleted
-- accounts kept for the audit log, and the outbox mail leaves from.

-- A deleted account stays as a tombstone (its audit entries keep pointing at it);
-- its username and e-mail address are free for a new account.
ALTER TABLE users ADD COLUMN deleted_at timestamptz;
DROP INDEX users_username_key;
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_username_key ON users (lower(username)) WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX users_email_key ON users (lower(email)) WHERE deleted_at IS NULL;

-- The one live verification code of an account: for `email`, as it was when the
-- code was sent (a code sent to an old address verifies nothing after a change).
CREATE TABLE email_verifications (
    user_id uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    email text NOT NULL,
    -- HMAC-SHA256 of the code under the server's secret: six digits are too few to
    -- keep a plain hash secret.
    code_hash text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    sent_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

-- Password-reset tokens, single use, stored as SHA-256 hashes.
CREATE TABLE password_resets (
    token_hash text PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at timestamptz
);
CREATE INDEX password_resets_user_id_idx ON password_resets (user_id);

-- Mail waiting to leave. A row is written in the transaction that decides to send
-- it, picked up by the sender (any process: rows are claimed with SKIP LOCKED),
-- deleted once the mail server took it, retried with backoff meanwhile, and kept
-- with `failed_at` when the mail server refuses it for good.
CREATE TABLE mail_outbox (
    id uuid PRIMARY KEY,
    -- What it is (`verification`, `password_reset`, ...), for logs and metrics.
    kind text NOT NULL,
    recipient text NOT NULL,
    subject text NOT NULL,
    text_body text NOT NULL,
    html_body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    failed_at timestamptz
);
CREATE INDEX mail_outbox_due_idx ON mail_outbox (next_attempt_at) WHERE failed_at IS NULL;
