-- One text for both engines (SQLite's migration 9, PostgreSQL's 6).
-- Writers under way per claimed digest (ARCHITECTURE.md, "Garbage collection"): a claim adds
-- one, the record of its file takes one away in the same transaction. A writer refused at its
-- record that leaves the count at zero, with no file using the digest, deletes the bytes it
-- published at once instead of leaving them to a collection. A crashed writer leaves the count
-- too high, which only leaves its bytes to the collection, as before.
ALTER TABLE blob_claims ADD COLUMN writers BIGINT NOT NULL DEFAULT 0;
