-- A retired pipeline takes no new deal, opened or moved in; the deals in it carry on to their close.
ALTER TABLE pipelines ADD COLUMN retired boolean NOT NULL DEFAULT false;
