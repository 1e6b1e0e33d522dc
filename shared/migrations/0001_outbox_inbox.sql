-- Every service database has an outbox (its event history) and an inbox (events it applied).

-- Columns id, aggregatetype, aggregateid, type and payload follow Debezium's outbox event
-- router, so a cluster can replace the in-process relay with Kafka Connect unchanged.
CREATE TABLE outbox (
    position      bigserial PRIMARY KEY,
    id            uuid        NOT NULL UNIQUE,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    topic         text        NOT NULL,
    payload       jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
CREATE INDEX outbox_history ON outbox (created_at, type);

CREATE TABLE inbox (
    consumer_group text        NOT NULL,
    event_id       text        NOT NULL,
    event_type     text        NOT NULL,
    applied_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, event_id)
);

-- The outbox is a queue: keep its statistics and dead tuples fresh so the relay's
-- "oldest unpublished first" query stays an index scan under bursts.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);
