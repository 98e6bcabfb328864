-- Small files' bytes, kept beside their records so that both become durable in one commit.
-- Content-addressed like the blob directory: identical bytes are kept once.
CREATE TABLE inline_blobs (
    sha256 TEXT PRIMARY KEY NOT NULL,
    bytes  BLOB NOT NULL
) WITHOUT ROWID;
