DROP TABLE app_runs;
DROP TABLE apps;
DROP TABLE projects;
