-- Quotes (报价) of an opportunity: line items, discounts, totals and the approval step.
CREATE TABLE quotes (
    id                  text PRIMARY KEY,
    opportunity_id      text NOT NULL REFERENCES opportunities (id),
    account_id          text NOT NULL REFERENCES accounts (id),
    owner_id            text NOT NULL,  -- the opportunity's owner when the quote was drawn up
    currency            text NOT NULL,
    lines               jsonb NOT NULL,  -- [{"product", "quantity", "unit_price", "discount", "net"}], decimal strings
    discount            numeric(5, 2) NOT NULL CHECK (discount >= 0 AND discount < 100),  -- percent, quote-wide
    list_total          numeric(18, 2) NOT NULL CHECK (list_total >= 0),
    subtotal            numeric(18, 2) NOT NULL CHECK (subtotal >= 0),
    total               numeric(18, 2) NOT NULL CHECK (total >= 0),
    effective_discount  numeric(5, 2) NOT NULL,  -- percent off the list total, line and quote discounts together
    valid_until         date,
    note                text,
    status              text NOT NULL CHECK (status IN ('draft', 'pending_approval', 'approved', 'rejected')),
    approval_required   boolean,  -- set on submission
    approval_threshold  numeric(5, 2),  -- the threshold in force when it was submitted
    approver_id         text,  -- who was asked to approve (null: any director or admin)
    submitted_by        text,
    submitted_at        timestamptz,
    decided_by          text,  -- 'system' when approved automatically
    decided_at          timestamptz,
    decision_reason     text,
    version             integer NOT NULL DEFAULT 1,  -- one per published event: created is 1
    created_by          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX quotes_opportunity ON quotes (opportunity_id, created_at);
CREATE INDEX quotes_listing ON quotes (created_at, id);
