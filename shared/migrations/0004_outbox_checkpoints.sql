-- Per topic: the broker (its cluster id) the outbox publishes to, and the position from which
-- its consumers may not have consumed everything yet. When the relay finds another broker (an
-- in-memory broker restarted empty), it publishes again every event of the topic from there.
CREATE TABLE outbox_checkpoints (
    topic         text        PRIMARY KEY,
    broker        text        NOT NULL,
    from_position bigint      NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
