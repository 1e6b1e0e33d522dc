-- Accounts (客户), contacts, opportunities (商机) with their stage history, contracts (合同).
-- Amounts are numeric(18,2) with a currency; never floating point.

CREATE TABLE accounts (
    id                    text PRIMARY KEY,
    name                  text NOT NULL,
    normalised_name       text NOT NULL UNIQUE,  -- one account per company, however it is spelled
    region                text,
    owner_id              text,
    parent_account_id     text REFERENCES accounts (id),
    key_account           boolean NOT NULL DEFAULT false,
    value_tier            text CHECK (value_tier IN ('high', 'medium', 'low')),
    credit_limit          numeric(18, 2) CHECK (credit_limit >= 0),  -- null: no limit
    credit_currency       text NOT NULL DEFAULT 'CNY',
    lead_id               text,
    version               integer NOT NULL DEFAULT 1,
    created_by            text NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contacts (
    id          text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    name        text NOT NULL,
    phone       text,
    email       text,
    lead_id     text UNIQUE,  -- a converted lead gives exactly one contact
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE opportunities (
    id                   text PRIMARY KEY,
    name                 text NOT NULL,
    account_id           text NOT NULL REFERENCES accounts (id),
    contact_id           text REFERENCES contacts (id),
    owner_id             text NOT NULL,
    region               text,
    pipeline             text NOT NULL DEFAULT 'default',
    stage                text NOT NULL,
    status               text NOT NULL,
    probability          integer NOT NULL CHECK (probability BETWEEN 0 AND 100),
    amount               numeric(18, 2) NOT NULL CHECK (amount >= 0),
    currency             text NOT NULL,
    expected_close_date  date,
    stage_entered_at     timestamptz NOT NULL,
    lead_id              text UNIQUE,  -- a converted lead opens exactly one opportunity
    campaign_id          text,
    close_reason         text,
    competitor           text,
    closed_at            timestamptz,
    status_reason        text,
    version              integer NOT NULL DEFAULT 1,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX opportunities_listing ON opportunities (created_at, id);
CREATE INDEX opportunities_owner ON opportunities (owner_id);

CREATE TABLE stage_history (
    id                         bigserial PRIMARY KEY,
    opportunity_id             text NOT NULL REFERENCES opportunities (id),
    from_stage                 text NOT NULL,
    to_stage                   text NOT NULL,
    changed_by                 text NOT NULL,
    changed_at                 timestamptz NOT NULL,
    seconds_in_previous_stage  bigint NOT NULL
);
CREATE INDEX stage_history_opportunity ON stage_history (opportunity_id, id);

CREATE TABLE contracts (
    id              text PRIMARY KEY,
    opportunity_id  text NOT NULL REFERENCES opportunities (id),
    account_id      text NOT NULL REFERENCES accounts (id),
    owner_id        text NOT NULL,
    amount          numeric(18, 2) NOT NULL CHECK (amount >= 0),
    currency        text NOT NULL,
    status          text NOT NULL,
    campaign_id     text,
    signed_by       text,
    signed_at       timestamptz,
    version         integer NOT NULL DEFAULT 0,  -- counts published changes: signing is 1
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contracts_account ON contracts (account_id, status);
