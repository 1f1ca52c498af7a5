-- An environment the API reports as terminated (being deleted) no longer holds its
-- name: a new one may take it at once.
DROP INDEX environments_user_name_key;
CREATE UNIQUE INDEX environments_user_name_key
    ON environments (user_id, lower(name))
    WHERE deleted_at IS NULL AND status <> 'terminated';
