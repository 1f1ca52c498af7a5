DROP TABLE environment_logs;
DROP TABLE environments;
DROP TABLE templates;
