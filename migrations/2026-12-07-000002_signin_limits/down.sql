DROP TABLE signin_known_addresses;
DROP TABLE signin_budgets;
