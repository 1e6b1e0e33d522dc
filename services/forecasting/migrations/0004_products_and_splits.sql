-- The product a deal rolls up under (null: the key "unspecified") and the owners sharing it with their
-- splits ([{"owner_id", "split"}], the first the primary; null while the primary owner alone holds it).
ALTER TABLE deals ADD COLUMN product text;
ALTER TABLE deals ADD COLUMN splits jsonb;
