-- The OCI distribution face (ARCHITECTURE.md, "The OCI face").
-- Manifests served under /v2/: a package's generated artifact manifest (repository '', served
-- under every repository of its tenant; its digest remembered the first time it is served, so
-- a client can read it again by digest), or a manifest pushed to a repository (its exact bytes
-- and media type, its subject for the referrers API). One package per (repository, digest).
-- A package's rows go with it.
CREATE TABLE oci_manifests (
    tenant        TEXT COLLATE "C" NOT NULL,
    repository    TEXT COLLATE "C" NOT NULL,
    digest        TEXT NOT NULL,
    package_id    TEXT NOT NULL,
    media_type    TEXT,
    bytes         BYTEA,
    subject       TEXT,
    artifact_type TEXT,
    PRIMARY KEY (tenant, repository, digest)
);
CREATE INDEX oci_manifests_package ON oci_manifests (package_id);
CREATE INDEX oci_manifests_subject ON oci_manifests (tenant, repository, subject);
-- Manifests a pushed index names, and the subjects of pushed referrers: retention keeps the
-- packages of those manifests while the packages naming them (by_package) exist.
CREATE TABLE oci_references (
    tenant     TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,
    by_package TEXT NOT NULL,
    PRIMARY KEY (tenant, repository, digest, by_package)
);
CREATE INDEX oci_references_by ON oci_references (by_package);
-- Blobs pushed through /v2/ that no manifest references yet: the tenant's to read, mount and
-- reference while their bytes last (the claim made at the push keeps them for the GC grace).
CREATE TABLE oci_blobs (
    tenant    TEXT NOT NULL,
    digest    TEXT NOT NULL,
    size      BIGINT NOT NULL,
    pushed_at BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest)
);
-- A package's CBOR manifest is the config blob of its artifact: found by its digest.
CREATE INDEX packages_by_manifest ON packages (tenant, manifest_digest);
