-- The lead a duplicate was merged into (sales.lead.merged.v1): a merged lead is no lead of its own in
-- the conversion and campaign figures. Kept as a mark, not deleted, so that the duplicate's own events
-- arriving after the merge (another partition) do not bring it back.
ALTER TABLE leads ADD COLUMN merged_into text;
