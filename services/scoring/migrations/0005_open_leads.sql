-- A lead folded into another as a duplicate is closed too: status open, converted, disqualified or merged.
-- The periodic re-scoring walks the open leads in id order, a bounded batch at a time.
CREATE INDEX lead_scores_open ON lead_scores (lead_id) WHERE status = 'open';
