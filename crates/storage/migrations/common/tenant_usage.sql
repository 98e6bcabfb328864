-- One text for both engines (SQLite's migration 7, PostgreSQL's 4).
-- What each tenant uses, kept by every change in its own transaction (for quotas and
-- GET /usage without summing): bytes = sizes of its files + offsets of its open uploads.
CREATE TABLE tenant_usage (
    tenant       TEXT PRIMARY KEY NOT NULL,
    bytes        BIGINT NOT NULL DEFAULT 0,
    packages     BIGINT NOT NULL DEFAULT 0,
    open_uploads BIGINT NOT NULL DEFAULT 0
);
INSERT INTO tenant_usage (tenant)
    SELECT tenant FROM packages UNION SELECT tenant FROM uploads;
UPDATE tenant_usage SET
    bytes = COALESCE((SELECT SUM(size) FROM files WHERE files.tenant = tenant_usage.tenant), 0)
          + COALESCE((SELECT SUM("offset") FROM uploads
                      WHERE uploads.tenant = tenant_usage.tenant AND state = 'open'), 0),
    packages = (SELECT COUNT(*) FROM packages WHERE packages.tenant = tenant_usage.tenant),
    open_uploads = (SELECT COUNT(*) FROM uploads
                    WHERE uploads.tenant = tenant_usage.tenant AND state = 'open');
