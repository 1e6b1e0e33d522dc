-- What the daily digest needs to know, kept from events: leads and their follow-up, open deals.

CREATE TABLE lead_watch (
    lead_id           text PRIMARY KEY,
    owner_id          text,
    grade             text,
    follow_up_due_at  timestamptz,
    contacted_at      timestamptz,
    closed            boolean NOT NULL DEFAULT false,   -- qualified, disqualified, converted or merged
    score             int,
    scored_at         timestamptz
);
CREATE INDEX lead_watch_owner ON lead_watch (owner_id) WHERE NOT closed;

CREATE TABLE opportunity_watch (
    opportunity_id       text PRIMARY KEY,
    owner_id             text,
    amount               numeric,
    currency             text,
    expected_close_date  date,
    open                 boolean NOT NULL DEFAULT true
);
CREATE INDEX opportunity_watch_owner ON opportunity_watch (owner_id) WHERE open;

-- One pending daily digest at a time, however many instances start.
CREATE UNIQUE INDEX timers_one_digest ON timers (kind)
    WHERE kind = 'daily-digest' AND fired_at IS NULL AND cancelled_at IS NULL;
