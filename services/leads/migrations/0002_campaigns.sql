-- Campaigns (市场活动); leads point at them by leads.campaign_id.
CREATE TABLE campaigns (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    channel     text NOT NULL,
    status      text NOT NULL,
    budget      numeric(18, 2) NOT NULL,
    actual_cost numeric(18, 2) NOT NULL,
    currency    text NOT NULL,
    starts_on   date,
    ends_on     date,
    owner_id    text,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL,
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX campaigns_listing ON campaigns (created_at DESC, id DESC);
CREATE INDEX leads_campaign ON leads (campaign_id) WHERE campaign_id IS NOT NULL;
