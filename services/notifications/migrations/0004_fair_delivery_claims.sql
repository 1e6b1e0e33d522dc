-- Deliveries are claimed per subscription (at most its rate-limit allowance each, workers.py), so the
-- due ones are found per subscription, oldest first; this replaces the index over all due deliveries.
CREATE INDEX webhook_deliveries_due_per_subscription ON webhook_deliveries (subscription_id, next_attempt_at)
    WHERE status = 'pending';
DROP INDEX webhook_deliveries_due;
