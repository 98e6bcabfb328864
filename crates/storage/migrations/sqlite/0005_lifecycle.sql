-- Lifecycle: holds, and the indexes deletion, retention and garbage collection read by.
ALTER TABLE packages ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
-- Retention: a class's finalized packages by age, and per subject newest first.
CREATE INDEX packages_for_retention ON packages (retention_class, state, finalized_at);
CREATE INDEX packages_by_class_subject ON packages (retention_class, tenant, subject, state, finalized_at);
-- Deleting a package's files; "is this digest still referenced" for garbage collection.
CREATE INDEX files_by_package ON files (package_id);
CREATE INDEX files_by_sha256 ON files (sha256, inline);
-- Background duties that one replica at a time should run (retention, garbage collection):
-- a duty is held by `holder` until `expires_at` (ms), renewed by its holder while it runs.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY NOT NULL,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
