-- One text for both engines (SQLite's migration 6, PostgreSQL's 3).
-- Garbage collection's coordination with writers (ARCHITECTURE.md, "Garbage collection"): a
-- writer claims a digest (touched_at, with a generation) before it publishes or dedups onto
-- its bytes; a collection dooms it (doomed_at) before deleting them, only if no file uses it
-- and no claim is younger than the grace period; a file is recorded only if its claim's
-- generation still stands undoomed.
CREATE TABLE blob_claims (
    sha256     TEXT PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL,
    touched_at BIGINT NOT NULL,
    doomed_at  BIGINT
);
CREATE INDEX blob_claims_doomed ON blob_claims (doomed_at) WHERE doomed_at IS NOT NULL;
