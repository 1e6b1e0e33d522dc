-- Sales pipelines an admin configures: ordered open stages with labels and default win probabilities;
-- won (100) and lost (0) close every pipeline and are not stored. The default project-sales pipeline is
-- seeded here as services/opportunities/domain.py DEFAULT_PIPELINE defines it.
CREATE TABLE pipelines (
    id              text PRIMARY KEY,  -- a slug, never changed
    name_zh         text NOT NULL,
    name_en         text NOT NULL,
    stages          jsonb NOT NULL,  -- [{"key", "label_zh", "label_en", "probability"}], in order
    allow_skipping  boolean NOT NULL DEFAULT true,  -- false: forwards one stage at a time
    version         integer NOT NULL DEFAULT 1,
    created_by      text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text,
    updated_at      timestamptz
);

INSERT INTO pipelines (id, name_zh, name_en, stages, allow_skipping, created_by) VALUES (
    'project_sales', '项目销售', 'Project sales',
    '[{"key": "prospecting", "label_zh": "潜在客户跟踪", "label_en": "Prospecting", "probability": 10},
      {"key": "bidding", "label_zh": "项目投标", "label_en": "Bidding", "probability": 30},
      {"key": "negotiation", "label_zh": "商务洽谈", "label_en": "Negotiation", "probability": 60},
      {"key": "contract", "label_zh": "签订合同", "label_en": "Contract", "probability": 80}]',
    true, 'system'
);

-- Every opportunity so far was in the one pipeline, named 'default' until now.
ALTER TABLE opportunities RENAME COLUMN pipeline TO pipeline_id;
UPDATE opportunities SET pipeline_id = 'project_sales';
ALTER TABLE opportunities ALTER COLUMN pipeline_id SET DEFAULT 'project_sales',
    ADD CONSTRAINT opportunities_pipeline FOREIGN KEY (pipeline_id) REFERENCES pipelines (id);
-- No index on (pipeline_id, stage): a pipeline change, rare, may scan; a stage move stays a HOT update.
