-- A merge moves the duplicate's touches, notes and engagements onto the survivor; each moved row names
-- the lead it was recorded on (its first one, through merges of merges).
ALTER TABLE lead_touches ADD COLUMN merged_from text REFERENCES leads (id);
ALTER TABLE lead_notes ADD COLUMN merged_from text REFERENCES leads (id);
ALTER TABLE lead_engagements ADD COLUMN merged_from text REFERENCES leads (id);
-- the engagements of one lead: moved by a merge, read by the lead's history
CREATE INDEX lead_engagements_lead ON lead_engagements (lead_id, observed_at);
