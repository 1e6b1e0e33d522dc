-- Each opportunity as the forecast sees it, kept from the opportunity, contract and score events.
CREATE TABLE deals (
    opportunity_id      text PRIMARY KEY,
    owner_id            text,
    amount              numeric NOT NULL DEFAULT 0,
    currency            text NOT NULL DEFAULT 'CNY',
    amount_reporting    numeric,          -- in the reporting currency; null: no rate for its currency
    expected_close_date date,
    stage               text NOT NULL,
    status              text NOT NULL,    -- open, suspended, won, lost, terminated
    stage_probability   numeric NOT NULL, -- the stage's default win probability, percent
    scored_probability  numeric,          -- the scoring service's, percent; null until scored
    probability         numeric NOT NULL, -- the one the forecast uses
    category            text NOT NULL,    -- pipeline, best_case, commit, closed_won, omitted
    closed_on           date,
    forecast_on         date,             -- the day that places it in a period (close day once won)
    created_at          timestamptz,
    updated_at          timestamptz NOT NULL
);
CREATE INDEX deals_by_period ON deals (forecast_on) WHERE forecast_on IS NOT NULL;

-- Every stage move, for the funnel (conversion, time in stage).
CREATE TABLE deal_transitions (
    event_id       text PRIMARY KEY,
    opportunity_id text NOT NULL,
    owner_id       text,
    from_stage     text,
    to_stage       text NOT NULL,
    at             timestamptz NOT NULL
);
CREATE INDEX deal_transitions_by_deal ON deal_transitions (opportunity_id, at);

-- Signed contracts: booked revenue.
CREATE TABLE bookings (
    contract_id      text PRIMARY KEY,
    opportunity_id   text,
    owner_id         text,
    amount           numeric NOT NULL,
    currency         text NOT NULL,
    amount_reporting numeric,
    signed_on        date NOT NULL,
    status           text NOT NULL     -- signed, terminated
);
CREATE INDEX bookings_by_day ON bookings (signed_on);

-- Quotas set by managers over the API; they override the organisation file's.
CREATE TABLE quotas (
    owner_id text NOT NULL,
    period   text NOT NULL,
    amount   numeric NOT NULL CHECK (amount >= 0),
    set_by   text NOT NULL,
    set_at   timestamptz NOT NULL,
    PRIMARY KEY (owner_id, period)
);

-- The last published figures of each forecast row, to publish only when a figure moves.
CREATE TABLE forecast_rows (
    period     text NOT NULL,
    by         text NOT NULL,
    key        text NOT NULL,
    figures    jsonb NOT NULL,
    sequence   integer NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (period, by, key)
);

-- Every published forecast, so its accuracy against the actuals can be reported.
CREATE TABLE forecast_history (
    id             bigserial PRIMARY KEY,
    period         text NOT NULL,
    by             text NOT NULL,
    key            text NOT NULL,
    figures        jsonb NOT NULL,
    computed_at    timestamptz NOT NULL,
    cause_event_id text
);
CREATE INDEX forecast_history_by_row ON forecast_history (period, by, key, id);
