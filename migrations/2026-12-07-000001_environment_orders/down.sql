DROP TRIGGER environments_changed ON environments;
DROP FUNCTION devpocket_environment_changed();
DROP TABLE environment_orders;
DROP FUNCTION devpocket_order_written();
DROP FUNCTION devpocket_order_answered();
