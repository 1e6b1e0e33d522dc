-- The contract list (GET /v1/contracts) pages by (created_at, id); a deal's contracts are found by their deal.
CREATE INDEX contracts_listing ON contracts (created_at, id);
CREATE INDEX contracts_opportunity ON contracts (opportunity_id, created_at);
