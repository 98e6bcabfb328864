-- Where the blob store keeps an upload's staged bytes (opaque here; empty for the blob
-- directory), saved with the offset and hash state in one compare-and-set.
ALTER TABLE uploads ADD COLUMN staging TEXT NOT NULL DEFAULT '';
