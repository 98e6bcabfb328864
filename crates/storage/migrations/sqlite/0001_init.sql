-- artifactstore metadata, SQLite. Timestamps are integer milliseconds since the epoch, UTC.

CREATE TABLE packages (
    id              TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    producer        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    retention_class TEXT NOT NULL,
    metadata        TEXT NOT NULL,   -- JSON object, string to string
    state           TEXT NOT NULL CHECK (state IN ('open', 'finalized')),
    created_at      INTEGER NOT NULL,
    finalized_at    INTEGER,
    file_count      INTEGER NOT NULL DEFAULT 0,
    total_size      INTEGER NOT NULL DEFAULT 0,
    manifest_digest TEXT,
    manifest_cbor   BLOB,
    manifest_json   TEXT
);
-- One index per filter of GET /packages; ids sort by creation time (newest first = id DESC).
CREATE INDEX packages_by_tenant   ON packages (tenant, id);
CREATE INDEX packages_by_producer ON packages (tenant, producer, id);
CREATE INDEX packages_by_subject  ON packages (tenant, subject, id);
CREATE INDEX packages_by_class    ON packages (tenant, retention_class, id);
CREATE INDEX packages_by_state    ON packages (tenant, state, id);
CREATE INDEX packages_by_created  ON packages (tenant, created_at, id);

-- The metadata map again, one row per entry, for metadata.KEY=VALUE and has_metadata=KEY.
CREATE TABLE package_metadata (
    package_id TEXT NOT NULL REFERENCES packages (id),
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (package_id, key)
) WITHOUT ROWID;
CREATE INDEX package_metadata_by_kv ON package_metadata (tenant, key, value, package_id);

CREATE TABLE files (
    id         TEXT PRIMARY KEY NOT NULL,
    package_id TEXT NOT NULL REFERENCES packages (id),
    tenant     TEXT NOT NULL,
    path       TEXT NOT NULL,  -- BINARY collation: UTF-8 byte order
    size       INTEGER NOT NULL,
    media_type TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (package_id, path)
);
-- contains=sha256:…
CREATE INDEX files_by_digest ON files (tenant, sha256, package_id);

CREATE TABLE uploads (
    id         TEXT PRIMARY KEY NOT NULL,
    tenant     TEXT NOT NULL,
    size       INTEGER,
    "offset"   INTEGER NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('open', 'completed', 'cancelled')),
    hash_state BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    file_id    TEXT
);
CREATE INDEX uploads_by_expiry ON uploads (state, expires_at);

-- The append-only event log. A sequence is MAX + 1 inside the writing transaction; SQLite has
-- one writer at a time, so sequences commit in order and without gaps.
CREATE TABLE events (
    sequence    INTEGER PRIMARY KEY NOT NULL,
    type        TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    tenant      TEXT NOT NULL,
    package_id  TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant, sequence);
