-- One text for both engines (SQLite's migration 11, PostgreSQL's 8).
-- The OCI distribution face (ARCHITECTURE.md, "The OCI face"): the digests of manifests served
-- for packages, so a client that read one by tag or package id can read it again by digest.
-- `repository` is '' for a package's generated artifact manifest, served under every
-- repository of its tenant. A package's rows go with it.
CREATE TABLE oci_manifests (
    tenant     TEXT NOT NULL,
    repository TEXT NOT NULL,
    digest     TEXT NOT NULL,
    package_id TEXT NOT NULL,
    PRIMARY KEY (tenant, repository, digest)
);
CREATE INDEX oci_manifests_package ON oci_manifests (package_id);
-- A package's CBOR manifest is the config blob of its artifact: found by its digest.
CREATE INDEX packages_by_manifest ON packages (tenant, manifest_digest);
