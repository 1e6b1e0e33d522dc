-- The lead and campaign side of the funnel: leads by source and grade, campaign costs, and the
-- campaign a deal is attributed to (cost per lead, customer acquisition cost, ROI).
ALTER TABLE deals ADD COLUMN campaign_id text;

CREATE TABLE leads (
    lead_id      text PRIMARY KEY,
    source       text,
    grade        text,
    campaign_id  text,
    owner_id     text,
    captured_on  date,
    converted_on date
);
CREATE INDEX leads_by_capture ON leads (captured_on);

CREATE TABLE campaigns (
    campaign_id text PRIMARY KEY,
    name        text NOT NULL,
    channel     text,
    actual_cost numeric NOT NULL,
    currency    text NOT NULL,
    starts_on   date,
    ends_on     date
);
