-- Contracts are executed or terminated after signing (or terminated as drafts).
ALTER TABLE contracts ADD COLUMN executed_at timestamptz, ADD COLUMN terminated_at timestamptz,
    ADD COLUMN termination_reason text;
