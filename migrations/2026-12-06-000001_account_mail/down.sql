DROP TABLE mail_outbox;
DROP TABLE password_resets;
DROP TABLE email_verifications;
DELETE FROM users WHERE deleted_at IS NOT NULL;
DROP INDEX users_username_key;
DROP INDEX users_email_key;
CREATE UNIQUE INDEX users_username_key ON users (lower(username));
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
ALTER TABLE users DROP COLUMN deleted_at;
