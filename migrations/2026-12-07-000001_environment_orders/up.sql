-- Several server processes on one database (see actors/src/remote.rs).

-- Orders for an environment's owning process, written by a process that does not
-- own it. The owner claims an order, carries it out and writes its answer; the
-- asking process reads the answer and removes the order.
CREATE TABLE environment_orders (
    id UUID PRIMARY KEY,
    environment_id UUID NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    instruction JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    claimed_by UUID,
    claimed_at TIMESTAMPTZ,
    answer JSONB,
    answered_at TIMESTAMPTZ
);
CREATE INDEX environment_orders_unclaimed
    ON environment_orders (environment_id, created_at) WHERE claimed_by IS NULL;

-- A new order tells every process ("user:environment"); the owner claims it.
CREATE FUNCTION devpocket_order_written() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('devpocket_order',
        (SELECT user_id FROM environments WHERE id = NEW.environment_id)::text
        || ':' || NEW.environment_id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER environment_orders_written AFTER INSERT ON environment_orders
    FOR EACH ROW EXECUTE FUNCTION devpocket_order_written();

-- An answer tells the asking process (the order's id).
CREATE FUNCTION devpocket_order_answered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('devpocket_answer', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER environment_orders_answered AFTER UPDATE OF answered_at ON environment_orders
    FOR EACH ROW WHEN (OLD.answered_at IS NULL AND NEW.answered_at IS NOT NULL)
    EXECUTE FUNCTION devpocket_order_answered();

-- Any change of an environment but its lease tells every process
-- ("user:environment"), at commit: followers read it again, list caches forget
-- the user's list. Every write path tells, whoever wrote it.
CREATE FUNCTION devpocket_environment_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row environments;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row := OLD;
    ELSE
        row := NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND (to_jsonb(OLD) - 'lease_owner' - 'lease_expires_at')
                          = (to_jsonb(NEW) - 'lease_owner' - 'lease_expires_at') THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('devpocket_environment', row.user_id::text || ':' || row.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER environments_changed AFTER INSERT OR UPDATE OR DELETE ON environments
    FOR EACH ROW EXECUTE FUNCTION devpocket_environment_changed();
