-- Who holds a split of a deal, one row per owner of a deal shared between several (owners not null);
-- the `owners` column stays the answer's copy, written by the same statement. A deal with one owner has
-- no rows: its owner_id says it all. Read by the scope of lists: a rep (and the rep's manager) sees the
-- deals where the rep holds a split.
CREATE TABLE opportunity_owners (
    opportunity_id  text NOT NULL REFERENCES opportunities (id),
    owner_id        text NOT NULL,
    split           integer NOT NULL CHECK (split BETWEEN 1 AND 100),
    PRIMARY KEY (opportunity_id, owner_id)
);
CREATE INDEX opportunity_owners_owner ON opportunity_owners (owner_id, opportunity_id);

INSERT INTO opportunity_owners (opportunity_id, owner_id, split)
SELECT o.id, shared.owner_id, shared.split
FROM opportunities o, jsonb_to_recordset(o.owners) AS shared (owner_id text, split integer)
WHERE o.owners IS NOT NULL AND jsonb_array_length(o.owners) > 1;
