-- One text for both engines (SQLite's migration 8, PostgreSQL's 5).
-- Fencing of garbage collection (ARCHITECTURE.md, "Garbage collection"): a lease's generation
-- changes whenever it changes hands, and a doom records the generation that made it; only that
-- generation, while it still holds the lease, releases it.
ALTER TABLE leases ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE blob_claims ADD COLUMN doomed_by BIGINT;
