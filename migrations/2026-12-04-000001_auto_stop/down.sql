DROP TABLE environment_activity;
ALTER TABLE environments DROP COLUMN auto_stop_minutes;
