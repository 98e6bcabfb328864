-- PostgreSQL's migration 7. Tags (ARCHITECTURE.md, "Tags"): a movable name for one finalized
-- package of a tenant. COLLATE "C": byte order, the order lists promise.
CREATE TABLE tags (
    tenant          TEXT COLLATE "C" NOT NULL,
    repository      TEXT COLLATE "C" NOT NULL,
    tag             TEXT COLLATE "C" NOT NULL,
    package_id      TEXT COLLATE "C" NOT NULL,
    manifest_digest TEXT NOT NULL,
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (tenant, repository, tag)
);
CREATE INDEX tags_package ON tags (package_id);
