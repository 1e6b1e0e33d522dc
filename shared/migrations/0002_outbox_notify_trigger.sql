-- Wake the relay when outbox rows commit, whoever wrote them, without a NOTIFY round trip
-- from the writer: NOTIFY from a trigger is delivered at commit like any other.
CREATE FUNCTION funnelcast_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('funnelcast_outbox', '');
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION funnelcast_outbox_notify();
