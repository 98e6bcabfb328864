-- Where a file's bytes live, recorded instead of guessed from its size. Until now a file of
-- at most 64 KiB was looked up in inline_blobs first: the files that lookup found are inline.
ALTER TABLE files ADD COLUMN inline INTEGER NOT NULL DEFAULT 0;
UPDATE files SET inline = 1
WHERE size <= 65536 AND sha256 IN (SELECT sha256 FROM inline_blobs);
