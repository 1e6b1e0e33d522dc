-- Per-account value tier and buyer type, from the account's signed contracts (terminated ones removed).
CREATE TABLE account_tiers (
    account_id   text PRIMARY KEY,
    owner_id     text,                  -- owner of the newest contract: who sees the tier besides managers
    contracts    jsonb NOT NULL,        -- [{contract_id, amount, currency, signed_at}] that count
    value_tier   text CHECK (value_tier IN ('high', 'medium', 'low')),
    buyer_type   text CHECK (buyer_type IN ('frequent', 'occasional', 'first_time')),
    amount_12m   numeric(18, 2),
    currency     text,
    factors      jsonb NOT NULL,
    tiered_at    timestamptz NOT NULL,
    sequence     integer NOT NULL       -- of the last sales.account.tiered.v1 published for this account
);
