DROP INDEX environments_user_name_key;
CREATE UNIQUE INDEX environments_user_name_key
    ON environments (user_id, lower(name)) WHERE deleted_at IS NULL;
