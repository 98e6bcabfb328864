-- Lifecycle: holds, the leases of background duties, and the indexes deletion, retention and
-- garbage collection read by. One text for both engines (SQLite's migration 5, PostgreSQL's 2).
ALTER TABLE packages ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;
-- Retention: a class's finalized packages per tenant and subject, newest first.
CREATE INDEX packages_by_class_subject ON packages (retention_class, tenant, subject, state, finalized_at);
-- Deleting a package's files; "does a file use this digest" for garbage collection.
CREATE INDEX files_by_package ON files (package_id);
CREATE INDEX files_by_sha256 ON files (sha256, inline);
-- Background duties that one replica at a time should run (retention, garbage collection):
-- a duty is held by `holder` until `expires_at` (ms), renewed by its holder while it runs.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
