-- Replays of the outbox history for subscribers (POST /v1/replays): what was asked and how far it got.
CREATE TABLE replays (
    id            uuid        PRIMARY KEY,
    requested_by  text        NOT NULL,
    since         timestamptz NOT NULL,
    until         timestamptz NOT NULL,
    event_types   text[],
    target_topic  text,
    count         integer     NOT NULL,
    sent          integer     NOT NULL DEFAULT 0,
    status        text        NOT NULL DEFAULT 'running',
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX replays_recent ON replays (created_at DESC);
