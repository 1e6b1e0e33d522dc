-- Per-lead features (the facts the events told) with the current score, and every score computed.
CREATE TABLE lead_scores (
    lead_id       text PRIMARY KEY,
    owner_id      text,
    features      jsonb NOT NULL,
    score         integer NOT NULL CHECK (score BETWEEN 0 AND 100),
    model_version text NOT NULL,
    factors       jsonb NOT NULL,
    scored_at     timestamptz NOT NULL,
    sequence      integer NOT NULL,  -- of the last sales.lead.scored.v1 published for this lead
    status        text NOT NULL DEFAULT 'open'  -- open, converted, disqualified
);

CREATE TABLE lead_score_history (
    id             bigserial PRIMARY KEY,
    lead_id        text NOT NULL,
    score          integer NOT NULL,
    model_version  text NOT NULL,
    factors        jsonb NOT NULL,
    scored_at      timestamptz NOT NULL,
    cause_event_id text NOT NULL UNIQUE,  -- the consumed event that caused it: one row per event
    cause_type     text NOT NULL
);
CREATE INDEX lead_score_history_by_lead ON lead_score_history (lead_id, id);

CREATE TABLE opportunity_scores (
    opportunity_id text PRIMARY KEY,
    owner_id       text,
    features       jsonb NOT NULL,
    score          integer NOT NULL CHECK (score BETWEEN 0 AND 100),
    model_version  text NOT NULL,
    factors        jsonb NOT NULL,
    scored_at      timestamptz NOT NULL,
    sequence       integer NOT NULL
);

CREATE TABLE opportunity_score_history (
    id             bigserial PRIMARY KEY,
    opportunity_id text NOT NULL,
    score          integer NOT NULL,
    model_version  text NOT NULL,
    factors        jsonb NOT NULL,
    scored_at      timestamptz NOT NULL,
    cause_event_id text NOT NULL UNIQUE,
    cause_type     text NOT NULL
);
CREATE INDEX opportunity_score_history_by_opportunity ON opportunity_score_history (opportunity_id, id);

-- Labels for the learned model: what became of a lead or an opportunity, with the features known then.
CREATE TABLE outcomes (
    subject_kind   text NOT NULL CHECK (subject_kind IN ('lead', 'opportunity')),
    subject_id     text NOT NULL,
    positive       boolean NOT NULL,      -- converted / won = true; disqualified / lost = false
    outcome        text NOT NULL,         -- converted, disqualified, won, lost
    features       jsonb,                 -- null when the service never saw the subject before
    observed_at    timestamptz NOT NULL,
    cause_event_id text NOT NULL,
    PRIMARY KEY (subject_kind, subject_id)
);
