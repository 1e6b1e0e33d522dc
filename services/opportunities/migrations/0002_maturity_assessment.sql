-- The presales maturity assessment (成熟度评估) of an opportunity: its factors and the maturity in percent.
ALTER TABLE opportunities ADD COLUMN assessment jsonb, ADD COLUMN maturity integer CHECK (maturity BETWEEN 0 AND 100);
