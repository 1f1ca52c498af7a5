-- Sign-in limits shared by every server process (they protect accounts, so they
-- must mean the same with one process or ten).

-- Failed-sign-in budgets (GCRA): per key ('ip:ADDRESS' or 'account:UUID'), the
-- theoretical arrival time of the next unit. A key whose time has passed is full,
-- the same as an absent one, and is swept.
CREATE TABLE signin_budgets (
    key TEXT PRIMARY KEY,
    tat TIMESTAMPTZ NOT NULL
);

-- The addresses each account signed in from lately (its 8 most recent).
CREATE TABLE signin_known_addresses (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, address)
);
