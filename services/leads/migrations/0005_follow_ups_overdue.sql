-- The leads still new, by follow-up due time: the overdue-follow-ups gauge counts them every
-- FUNNELCAST_LEADS_OVERDUE_REFRESH_S with an index-only scan of the overdue part (team and grade are
-- its labels, carried in the index), and `GET /v1/leads?overdue=true&sort=follow_up_due_at` reads the
-- follow-up queue from it. Only new leads are indexed: a lead leaves the index at its first touch.
CREATE INDEX leads_new_by_follow_up ON leads (follow_up_due_at) INCLUDE (team, grade) WHERE status = 'new';
