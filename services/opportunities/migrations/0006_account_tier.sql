-- The account's value tier and buyer type as the scoring service computes them (sales.account.tiered.v1).
ALTER TABLE accounts ADD COLUMN buyer_type text CHECK (buyer_type IN ('frequent', 'occasional', 'first_time'));
