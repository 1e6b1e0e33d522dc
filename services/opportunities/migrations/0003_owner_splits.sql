-- Several owners with splits of the amount ([{"owner_id", "split"}], summing to 100); null: owner_id alone, 100 %.
ALTER TABLE opportunities ADD COLUMN owners jsonb;
