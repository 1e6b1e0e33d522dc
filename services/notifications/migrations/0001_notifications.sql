-- Rules (admin-editable), the inbox, preferences, e-mails to send, timers, webhooks.

CREATE TABLE rules (
    id          text PRIMARY KEY,
    definition  jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text
);

-- Default rules are seeded once: a rule an admin deleted does not come back at restart.
CREATE TABLE seeded_rules (
    id         text PRIMARY KEY,
    seeded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    seq          bigserial UNIQUE,          -- delivery order; the reconnect cursor
    id           uuid PRIMARY KEY,
    recipient    text NOT NULL,
    rule_id      text NOT NULL,
    cause_id     text NOT NULL,             -- the event id, or timer:<id> for reminders
    event_type   text NOT NULL,
    subject      text NOT NULL,
    title        text NOT NULL,
    body         text NOT NULL,
    channels     text[] NOT NULL,
    priority     text NOT NULL DEFAULT 'normal',
    cause_time   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    read_at      timestamptz,
    -- nothing is sent twice for the same cause and rule, whatever the redelivery or instance
    UNIQUE (cause_id, rule_id, recipient)
);
CREATE INDEX notifications_inbox ON notifications (recipient, seq DESC);
CREATE INDEX notifications_unread ON notifications (recipient) WHERE read_at IS NULL;

CREATE TABLE preferences (
    user_id      text PRIMARY KEY,
    language     text NOT NULL DEFAULT 'zh-CN',
    opted_out    text[] NOT NULL DEFAULT '{}',
    quiet_start  time,
    quiet_end    time,
    timezone     text NOT NULL DEFAULT 'Asia/Shanghai',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE emails (
    id               bigserial PRIMARY KEY,
    notification_id  uuid NOT NULL UNIQUE REFERENCES notifications (id),
    to_address       text NOT NULL,
    subject          text NOT NULL,
    body             text NOT NULL,
    send_after       timestamptz NOT NULL,   -- quiet hours push this later
    status           text NOT NULL DEFAULT 'pending',   -- pending | sent | failed
    attempts         int NOT NULL DEFAULT 0,
    last_error       text,
    sent_at          timestamptz
);
CREATE INDEX emails_due ON emails (send_after) WHERE status = 'pending';

-- Durable timers: reminders, escalations, idle opportunities. A timer fires once.
CREATE TABLE timers (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL,
    subject       text NOT NULL,
    recipient     text NOT NULL,
    due_at        timestamptz NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    fired_at      timestamptz,
    cancelled_at  timestamptz
);
CREATE INDEX timers_due ON timers (due_at) WHERE fired_at IS NULL AND cancelled_at IS NULL;
CREATE INDEX timers_subject ON timers (subject, kind) WHERE fired_at IS NULL AND cancelled_at IS NULL;

CREATE TABLE webhook_subscriptions (
    id                    uuid PRIMARY KEY,
    owner_id              text NOT NULL,
    url                   text NOT NULL,
    event_types           text[] NOT NULL,
    secret                text NOT NULL,
    enabled               boolean NOT NULL DEFAULT true,
    disabled_reason       text,
    consecutive_failures  int NOT NULL DEFAULT 0,   -- dead-lettered deliveries in a row
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions_types ON webhook_subscriptions USING gin (event_types) WHERE enabled;

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY,
    subscription_id  uuid NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id         text NOT NULL,
    event_type       text NOT NULL,
    event_time       timestamptz NOT NULL,
    payload          text NOT NULL,          -- the CloudEvent, as delivered
    status           text NOT NULL DEFAULT 'pending',   -- pending | succeeded | dead
    attempts         int NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_status      int,
    last_error       text,
    replay_of        uuid REFERENCES webhook_deliveries (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);
-- one first delivery per subscription and event; replays are further rows
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (subscription_id, event_id) WHERE replay_of IS NULL;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (subscription_id, created_at DESC);

CREATE TABLE webhook_attempts (
    delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt       int NOT NULL,
    attempted_at  timestamptz NOT NULL DEFAULT now(),
    status_code   int,
    error         text,
    duration_ms   double precision NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);
