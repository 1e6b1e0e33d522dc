-- A merge re-points the leads merged earlier into its duplicate at its survivor, so merged_into always
-- names a lead that is not merged (one hop for captures and imports); this finds them. Partial: a
-- capture inserts no entry.
CREATE INDEX leads_merged_into ON leads (merged_into) WHERE merged_into IS NOT NULL;
-- Chains from before: each merged lead points at the end of its chain.
WITH RECURSIVE chain (id, survivor) AS (
    SELECT id, merged_into FROM leads WHERE merged_into IS NOT NULL
    UNION ALL
    SELECT chain.id, leads.merged_into FROM chain JOIN leads ON leads.id = chain.survivor
    WHERE leads.merged_into IS NOT NULL
)
UPDATE leads SET merged_into = ends.survivor
FROM (SELECT DISTINCT ON (chain.id) chain.id, chain.survivor FROM chain
      JOIN leads AS survivor ON survivor.id = chain.survivor AND survivor.merged_into IS NULL) AS ends
WHERE leads.id = ends.id AND leads.merged_into <> ends.survivor;
