-- artifactstore metadata, PostgreSQL. The same tables, columns and indexes as SQLite's
-- (0001 + 0002 there). Timestamps are integer milliseconds since the epoch, UTC.

-- Ids are ASCII and sort by creation time: COLLATE "C" makes their order the bytes' order,
-- as in SQLite.
CREATE TABLE packages (
    id              TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    producer        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    retention_class TEXT NOT NULL,
    metadata        TEXT NOT NULL,   -- JSON object, string to string
    state           TEXT NOT NULL CHECK (state IN ('open', 'finalized')),
    created_at      BIGINT NOT NULL,
    finalized_at    BIGINT,
    file_count      BIGINT NOT NULL DEFAULT 0,
    total_size      BIGINT NOT NULL DEFAULT 0,
    manifest_digest TEXT,
    manifest_cbor   BYTEA,
    manifest_json   TEXT
);
-- One index per filter of GET /packages; ids sort by creation time (newest first = id DESC).
CREATE INDEX packages_by_tenant   ON packages (tenant, id);
CREATE INDEX packages_by_producer ON packages (tenant, producer, id);
CREATE INDEX packages_by_subject  ON packages (tenant, subject, id);
CREATE INDEX packages_by_class    ON packages (tenant, retention_class, id);
CREATE INDEX packages_by_state    ON packages (tenant, state, id);
CREATE INDEX packages_by_created  ON packages (tenant, created_at, id);

CREATE TABLE package_metadata (
    package_id TEXT COLLATE "C" NOT NULL REFERENCES packages (id),
    tenant     TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    PRIMARY KEY (package_id, key)
);
CREATE INDEX package_metadata_by_kv ON package_metadata (tenant, key, value, package_id);

CREATE TABLE files (
    id         TEXT PRIMARY KEY NOT NULL,
    package_id TEXT COLLATE "C" NOT NULL REFERENCES packages (id),
    tenant     TEXT NOT NULL,
    path       TEXT COLLATE "C" NOT NULL,  -- "C": UTF-8 byte order
    size       BIGINT NOT NULL,
    media_type TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    inline     BOOLEAN NOT NULL DEFAULT FALSE,  -- bytes in inline_blobs, not the blob store
    UNIQUE (package_id, path)
);
-- contains=sha256:…
CREATE INDEX files_by_digest ON files (tenant, sha256, package_id);

CREATE TABLE uploads (
    id         TEXT PRIMARY KEY NOT NULL,
    tenant     TEXT NOT NULL,
    size       BIGINT,
    "offset"   BIGINT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('open', 'completed', 'cancelled')),
    hash_state BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    file_id    TEXT,
    staging    TEXT NOT NULL DEFAULT ''  -- the blob store's, with offset + hash state (one CAS)
);
CREATE INDEX uploads_by_expiry ON uploads (state, expires_at);

-- The append-only event log. Many writers on many replicas: a sequence taken at INSERT from
-- a SEQUENCE would become visible at COMMIT, out of order. Instead every event-writing
-- transaction takes the next number from this one row, as its last statement: the row lock
-- is held to COMMIT, so a second writer waits and sequences commit in their order, gap-free.
CREATE TABLE event_counter (
    id   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    last BIGINT NOT NULL
);
INSERT INTO event_counter (id, last) VALUES (TRUE, 0);

CREATE TABLE events (
    sequence    BIGINT PRIMARY KEY NOT NULL,
    type        TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    tenant      TEXT NOT NULL,
    package_id  TEXT NOT NULL,
    data        TEXT NOT NULL
);
CREATE INDEX events_by_tenant ON events (tenant, sequence);

-- Small files' bytes, beside their records, durable in the same commit; content-addressed.
CREATE TABLE inline_blobs (
    sha256 TEXT PRIMARY KEY NOT NULL,
    bytes  BYTEA NOT NULL
);
