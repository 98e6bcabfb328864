-- SQLite's migration 10. Tags (ARCHITECTURE.md, "Tags"): a movable name for one finalized
-- package of a tenant. Text compares by bytes (SQLite's BINARY), the order lists promise.
CREATE TABLE tags (
    tenant          TEXT NOT NULL,
    repository      TEXT NOT NULL,
    tag             TEXT NOT NULL,
    package_id      TEXT NOT NULL,
    manifest_digest TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant, repository, tag)
);
CREATE INDEX tags_package ON tags (package_id);
