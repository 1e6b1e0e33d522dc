-- The moment of an opportunity's last score while it was open (features, as_of, the owner's win rate
-- then): what its outcome is learned from, never the features at the close.
ALTER TABLE opportunity_scores ADD COLUMN open_moment jsonb;

-- The periodic re-scoring walks the open opportunities in id order, a bounded batch at a time.
CREATE INDEX opportunity_scores_open ON opportunity_scores (opportunity_id) WHERE (features->>'status') = 'open';

-- Won and lost deals per owner so far (updated with each recorded outcome, in its transaction): the
-- owner's win rate, a feature of the learned opportunity model.
CREATE TABLE owner_win_tallies (
    owner_id text PRIMARY KEY,
    won      integer NOT NULL DEFAULT 0 CHECK (won >= 0),
    lost     integer NOT NULL DEFAULT 0 CHECK (lost >= 0)
);

-- The owner whose tally counts an outcome (null: not counted, e.g. recorded before tallies were kept),
-- so that a deal closing again takes its earlier outcome back from the right tally.
ALTER TABLE outcomes ADD COLUMN counted_owner text;
