-- Leads (线索), their touches, inbound notes (e.g. duplicate captures) and the round-robin cursors.
CREATE TABLE leads (
    id                text PRIMARY KEY,
    status            text NOT NULL,
    grade             text,
    source            text NOT NULL,
    region            text,
    team              text,
    owner_id          text,
    campaign_id       text,
    contact_name      text NOT NULL,
    company           text,
    phone             text,          -- E.164
    email             text,          -- lower-cased
    attributes        jsonb NOT NULL DEFAULT '{}',
    captured_at       timestamptz NOT NULL,
    captured_by       text,
    follow_up_due_at  timestamptz NOT NULL,
    first_response_at timestamptz,
    last_contacted_at timestamptz,
    touch_count       integer NOT NULL DEFAULT 0,
    disqualify_reason text,
    converted_at      timestamptz,
    version           integer NOT NULL,
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- One lead per normalised phone and per e-mail: the duplicate rule, also under concurrent captures.
CREATE UNIQUE INDEX leads_phone_key ON leads (phone) WHERE phone IS NOT NULL;
CREATE UNIQUE INDEX leads_email_key ON leads (email) WHERE email IS NOT NULL;
CREATE INDEX leads_listing ON leads (captured_at DESC, id DESC);
CREATE INDEX leads_owner ON leads (owner_id, captured_at DESC);

CREATE TABLE lead_touches (
    id           text PRIMARY KEY,
    lead_id      text NOT NULL REFERENCES leads (id),
    number       integer NOT NULL,
    channel      text NOT NULL,
    outcome      text,
    note         text,
    contacted_at timestamptz NOT NULL,
    contacted_by text NOT NULL,
    UNIQUE (lead_id, number)
);

CREATE TABLE lead_notes (
    id         text PRIMARY KEY,
    lead_id    text NOT NULL REFERENCES leads (id),
    kind       text NOT NULL,
    body       jsonb NOT NULL,
    created_by text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lead_notes_lead ON lead_notes (lead_id, created_at);

CREATE TABLE lead_engagements (
    id             bigserial PRIMARY KEY,
    lead_id        text NOT NULL REFERENCES leads (id),
    visits         integer NOT NULL,
    time_on_site_s double precision NOT NULL,
    page_views     integer NOT NULL,
    activity       text,
    reported_by    text NOT NULL,
    observed_at    timestamptz NOT NULL
);

-- The last rep each team's round robin gave a lead to; locked FOR UPDATE by each capture.
CREATE TABLE assignment_cursors (
    team           text PRIMARY KEY,
    last_owner_id  text
);
