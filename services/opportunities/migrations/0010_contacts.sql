-- Contacts become records of their own (the contacts API): a job title, a buying role, the account's
-- primary contact, a version for If-Match, who changed them and when, and archiving (a contact named by
-- a closed deal stays readable: opportunities.contact_id refers to it).
ALTER TABLE contacts
    ADD COLUMN title        text,
    ADD COLUMN role         text CHECK (role IN ('decision_maker', 'influencer', 'evaluator', 'user', 'other')),
    ADD COLUMN is_primary   boolean NOT NULL DEFAULT false,
    ADD COLUMN version      integer NOT NULL DEFAULT 1,
    ADD COLUMN created_by   text NOT NULL DEFAULT 'system',
    ADD COLUMN updated_by   text,
    ADD COLUMN updated_at   timestamptz,
    ADD COLUMN archived_by  text,
    ADD COLUMN archived_at  timestamptz;
ALTER TABLE contacts ALTER COLUMN created_by DROP DEFAULT;
-- An account's contacts in listing order; also where the duplicate phone / e-mail check looks.
CREATE INDEX contacts_of_account ON contacts (account_id, created_at, id);
-- One primary contact per account at most (setting another demotes the former one).
CREATE UNIQUE INDEX contacts_one_primary ON contacts (account_id) WHERE is_primary AND archived_at IS NULL;
-- Deals naming a contact: a contact in use by an open one is not archived.
CREATE INDEX opportunities_contact ON opportunities (contact_id) WHERE contact_id IS NOT NULL;
