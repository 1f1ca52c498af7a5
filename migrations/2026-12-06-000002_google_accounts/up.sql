-- Google sign-in: the Google account (its stable subject, the ID token's `sub`) an
-- account is linked to. At most one account per Google subject; NULL: not linked.
ALTER TABLE users ADD COLUMN google_sub text;
CREATE UNIQUE INDEX users_google_sub_key ON users (google_sub);
