-- Small files' bytes, kept beside their records so that both become durable in one commit.
-- Content-addressed like the blob directory: identical bytes are kept once. A rowid table on
-- purpose: in a WITHOUT ROWID table every key comparison would read a row's whole overflowing
-- payload, while here the key lookup touches only the small index on sha256.
CREATE TABLE inline_blobs (
    sha256 TEXT PRIMARY KEY NOT NULL,
    bytes  BLOB NOT NULL
);
