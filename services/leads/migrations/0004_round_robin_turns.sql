-- A team's round robin counts turns instead of remembering the last rep served: a capture takes the
-- next turn in one statement (the row is locked only for that statement, not until the lead commits)
-- and the turn names the rep (domain.rep_for_turn). Counting starts again at the first rep.
ALTER TABLE assignment_cursors DROP COLUMN last_owner_id;
ALTER TABLE assignment_cursors ADD COLUMN turns bigint NOT NULL DEFAULT 0;
