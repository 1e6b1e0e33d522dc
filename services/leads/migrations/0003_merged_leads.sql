-- A lead merged by hand into another keeps its row and history and points at the survivor.
ALTER TABLE leads ADD COLUMN merged_into text REFERENCES leads (id);
