DROP TABLE terminal_clients;
