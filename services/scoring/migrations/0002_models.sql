-- Learned models, each with its training window and its evaluation on the held-out slice.
CREATE TABLE models (
    version      text PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('lead', 'opportunity')),
    algorithm    text NOT NULL,
    parameters   jsonb NOT NULL,             -- plain numbers, never a pickle
    trained_at   timestamptz NOT NULL,
    window_from  timestamptz NOT NULL,       -- the outcomes it saw: observed from ... to
    window_to    timestamptz NOT NULL,
    n_train      integer NOT NULL,
    n_holdout    integer NOT NULL,
    auc          double precision NOT NULL,  -- ROC AUC on the held-out slice
    brier        double precision NOT NULL,  -- calibration: Brier score on the held-out slice
    current_version text NOT NULL,           -- the model it was compared with
    current_auc  double precision NOT NULL,  -- that model's AUC on the same slice
    promoted     boolean NOT NULL,
    active       boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX models_one_active_per_kind ON models (kind) WHERE active;
