//! Real OCI clients against the real binary: Debian's `skopeo` and PyPI's `oras` (in
//! `.venv-tools`, which `make tools` fills) pull packages pushed with our own CLI, on
//! whatever stores the environment names. Each test needs its client, says so when it is
//! missing, and is `#[ignore]`d for that reason; `make test` runs them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The Python of `.venv-tools` with `oras` importable, or a failure saying what installs it.
fn oras_python() -> PathBuf {
    let python = root().join(".venv-tools/bin/python");
    let ok = Command::new(&python)
        .args(["-c", "import oras.client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "oras is not installed in .venv-tools (make tools installs it)"
    );
    python
}

fn skopeo(args: &[&str]) -> std::process::Output {
    let out = Command::new("skopeo").args(args).output();
    out.expect("skopeo is not installed (CI installs Debian's skopeo)")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `skopeo list-tags`: the repository's tags.
fn list_tags(image: &str, creds: &str) -> serde_json::Value {
    let args = ["list-tags", "--tls-verify=false", "--creds", creds, image];
    let tags: serde_json::Value = serde_json::from_str(&ok(&skopeo(&args))).unwrap();
    tags
}

/// A tree with nested directories, an empty file and a file the size of many chunks.
fn tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin/deep/er")).unwrap();
    std::fs::write(dir.join("README"), b"read me").unwrap();
    std::fs::write(dir.join("empty"), b"").unwrap();
    std::fs::write(
        dir.join("bin/app"),
        artifactstore_testkit::bytes(3_000_000, 4),
    )
    .unwrap();
    std::fs::write(dir.join("bin/deep/er/x.json"), br#"{"x": 1}"#).unwrap();
}

/// Every file under `dir`, by its path relative to it, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Pushes `tree` with the CLI and tags it `REPO:TAG`; the package id.
fn push_and_tag(server: &Server, src: &Path, reference: &str) -> String {
    let pushed = ok(&server.push(src, &["--json"]));
    let pushed: serde_json::Value = serde_json::from_str(pushed.lines().last().unwrap()).unwrap();
    let id = pushed["package_id"].as_str().unwrap().to_string();
    ok(&server.run(&["tag", &id, reference]));
    id
}

#[test]
#[ignore = "needs oras in .venv-tools (make test installs it)"]
fn oras_pulls_a_package_pushed_by_the_cli_as_the_same_tree() {
    let python = oras_python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    tree(&src);
    let id = push_and_tag(&server, &src, "team/tree:v1");
    let host = format!("127.0.0.1:{}", server.port);
    for (target, out) in [
        (
            format!("{host}/acme/team/tree:v1"),
            dir.path().join("by-tag"),
        ),
        (
            format!("{host}/acme/anything:{id}"),
            dir.path().join("by-id"),
        ),
    ] {
        let script = format!(
            "import oras.client\n\
             c = oras.client.OrasClient(hostname={host:?}, insecure=True)\n\
             c.login(username='ci', password={TOKEN:?}, hostname={host:?})\n\
             c.pull(target={target:?}, outdir={out:?})\n",
            out = out.to_str().unwrap()
        );
        ok(&Command::new(&python)
            .args(["-c", &script])
            .output()
            .unwrap());
        assert_eq!(files(&out), files(&src), "{target}");
    }
}

#[test]
#[ignore = "needs skopeo (make test installs it)"]
fn skopeo_inspects_lists_copies_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    tree(&src);
    let id = push_and_tag(&server, &src, "team/tree:v1");
    ok(&server.run(&["tag", &id, "team/tree:latest"]));
    let image = format!("docker://127.0.0.1:{}/acme/team/tree", server.port);
    let creds = format!("ci:{TOKEN}");
    let raw = ok(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("{image}:v1"),
    ]));
    assert_eq!(
        raw.as_bytes(),
        server.http("/v2/acme/team/tree/manifests/v1")
    );
    let tags = list_tags(&image, &creds);
    assert_eq!(tags["Tags"], serde_json::json!(["latest", "v1"]));

    // Copied out to an OCI layout, digests preserved: the same manifest, the files as blobs.
    let layout = dir.path().join("layout");
    ok(&skopeo(&[
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("{image}:v1"),
        &format!("oci:{}:v1", layout.display()),
    ]));
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let digest = artifactstore_core::Sha256Digest::of(raw.as_bytes()).content_address();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["digest"], digest.as_str());
    for layer in manifest["layers"].as_array().unwrap() {
        let hex = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let title = layer["annotations"]["org.opencontainers.image.title"]
            .as_str()
            .unwrap();
        let blob = std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap();
        assert_eq!(blob, std::fs::read(src.join(title)).unwrap(), "{title}");
    }

    // And back into another repository, after a login (the token flow, with an auth file):
    // the artifact keeps its digest; the store already serves that manifest in every
    // repository of the tenant (it is the package's own), so the push only tags it.
    let auth = dir.path().join("auth.json");
    let auth = auth.to_str().unwrap();
    let host = format!("127.0.0.1:{}", server.port);
    ok(&skopeo(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        auth,
        "-u",
        "ci",
        "-p",
        TOKEN,
        &host,
    ]));
    let copied = format!("docker://{host}/acme/copied:v1");
    ok(&skopeo(&[
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--authfile",
        auth,
        &format!("oci:{}:v1", layout.display()),
        &copied,
    ]));
    let again = ok(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--authfile",
        auth,
        &copied,
    ]));
    assert_eq!(again, raw, "the same bytes, so the same digest");
    let pushed = server.http("/tags/copied/v1");
    let pushed: serde_json::Value = serde_json::from_slice(&pushed).unwrap();
    assert_eq!(pushed["package_id"], id.as_str(), "no second package");

    // skopeo delete names the manifest by digest: the package goes, with both its tags.
    ok(&skopeo(&[
        "delete",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("{image}:latest"),
    ]));
    let out = server.run(&["show", &id]);
    assert_eq!(out.status.code(), Some(4), "the package is gone");
    // Nothing is left in the repository: it is unknown now.
    let args = ["list-tags", "--tls-verify=false", "--creds", &creds, &image];
    let gone = skopeo(&args);
    assert!(!gone.status.success());
    let said = String::from_utf8_lossy(&gone.stderr);
    assert!(said.contains("404"), "{said}");
}

#[test]
#[ignore = "needs oras in .venv-tools (make test installs it)"]
fn oras_pushes_a_nested_tree_in_chunks_and_pulls_it_back() {
    let python = oras_python();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let src = dir.path().join("src");
    tree(&src);
    let names: Vec<String> = files(&src).into_iter().map(|(p, _)| p).collect();
    // oras titles a layer with the file's base name unless told otherwise.
    let annotations: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| {
            (
                n.clone(),
                serde_json::json!({ "org.opencontainers.image.title": n }),
            )
        })
        .collect();
    let annotation_file = dir.path().join("annotations.json");
    std::fs::write(&annotation_file, serde_json::to_vec(&annotations).unwrap()).unwrap();
    let host = format!("127.0.0.1:{}", server.port);
    let out = dir.path().join("out");
    let script = format!(
        "import oras.client\n\
         c = oras.client.OrasClient(hostname={host:?}, insecure=True)\n\
         c.login(username='ci', password={TOKEN:?}, hostname={host:?})\n\
         r = c.push(target={target:?}, files={names:?}, annotation_file={ann:?}, \
                    do_chunked=True, chunk_size=1000000)\n\
         assert r.status_code == 201, r.status_code\n\
         c.pull(target={target:?}, outdir={out:?})\n",
        target = format!("{host}/acme/team/pushed:v1"),
        ann = annotation_file.to_str().unwrap(),
        out = out.to_str().unwrap(),
    );
    let pushed = Command::new(&python)
        .args(["-c", &script])
        .current_dir(&src)
        .output()
        .unwrap();
    ok(&pushed);
    assert_eq!(files(&out), files(&src));
    // The push is a package like any other: our CLI pulls the same tree by its tag.
    let again = dir.path().join("again");
    ok(&server.run(&["pull", "team/pushed:v1", again.to_str().unwrap()]));
    assert_eq!(files(&again), files(&src));
}

/// Writes a multi-architecture OCI layout: two image manifests (config + one layer each)
/// under an index tagged `multi`; the index's digest.
fn multi_arch_layout(dir: &Path) -> String {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, usize) {
        let digest = artifactstore_core::Sha256Digest::of(bytes);
        std::fs::write(blobs.join(digest.hex()), bytes).unwrap();
        (digest.content_address(), bytes.len())
    };
    let mut manifests = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
        );
        let (config, config_size) = put(config.as_bytes());
        let (layer, layer_size) = put(&artifactstore_testkit::bytes(100_000, arch.len() as u64));
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
        });
        let (digest, size) = put(&serde_json::to_vec(&manifest).unwrap());
        manifests.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests,
    });
    let (index, size) = put(&serde_json::to_vec(&index).unwrap());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index, "size": size,
        "annotations": {"org.opencontainers.image.ref.name": "multi"},
    }]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    index
}

#[test]
#[ignore = "needs skopeo (make test installs it)"]
fn skopeo_copies_a_multi_architecture_index_in_and_out_with_its_digests() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let layout = dir.path().join("layout");
    let index = multi_arch_layout(&layout);
    let image = format!("docker://127.0.0.1:{}/acme/multi", server.port);
    let creds = format!("ci:{TOKEN}");
    ok(&skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &format!("oci:{}:multi", layout.display()),
        &format!("{image}:multi"),
    ]));
    let raw = ok(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("{image}:multi"),
    ]));
    assert_eq!(
        artifactstore_core::Sha256Digest::of(raw.as_bytes()).content_address(),
        index
    );
    let back = dir.path().join("back");
    ok(&skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &format!("{image}:multi"),
        &format!("oci:{}:multi", back.display()),
    ]));
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], index.as_str());
    // Every blob and manifest came back byte for byte.
    let blobs = |d: &Path| files(&d.join("blobs"));
    assert_eq!(blobs(&back), blobs(&layout));
    assert_eq!(
        list_tags(&image, &creds)["Tags"],
        serde_json::json!(["multi"])
    );
}

/// With anonymous reads on (as `make dev` runs), skopeo pushes with credentials and pulls
/// without any.
#[test]
#[ignore = "needs skopeo (make test installs it)"]
fn skopeo_pushes_with_credentials_and_pulls_anonymously_where_reads_are_open() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--anon-read", "true", "--anon-tenant", "acme"];
    let server = Server::start_with(&dir.path().join("data"), &args);
    let layout = dir.path().join("layout");
    let index = multi_arch_layout(&layout);
    let image = format!("docker://127.0.0.1:{}/acme/open:multi", server.port);
    let creds = format!("ci:{TOKEN}");
    let source = format!("oci:{}:multi", layout.display());
    ok(&skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &source,
        &image,
    ]));
    let back = dir.path().join("back");
    ok(&skopeo(&[
        "copy",
        "--all",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--src-no-creds",
        &image,
        &format!("oci:{}:multi", back.display()),
    ]));
    let top: serde_json::Value =
        serde_json::from_slice(&std::fs::read(back.join("index.json")).unwrap()).unwrap();
    assert_eq!(top["manifests"][0]["digest"], index.as_str());
    // Without credentials, nothing is pushed.
    let refused = skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        "--dest-no-creds",
        &source,
        &format!("docker://127.0.0.1:{}/acme/open:other", server.port),
    ]);
    assert!(!refused.status.success());
}

/// `podman` (root, vfs storage of its own): login through the token flow, push an image in
/// OCI and in Docker schema 2 form, remove it locally, pull it back.
#[test]
#[ignore = "needs podman (make test installs it)"]
fn podman_logs_in_pushes_and_pulls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("data"));
    let host = format!("127.0.0.1:{}", server.port);
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (root, run, auth) = (path("root"), path("run"), path("auth.json"));
    let podman = |args: &[&str]| {
        let out = Command::new("podman")
            .args([
                "--root",
                &root,
                "--runroot",
                &run,
                "--storage-driver",
                "vfs",
            ])
            .args(args)
            .output();
        out.expect("podman is not installed (CI installs Debian's podman)")
    };
    ok(&podman(&[
        "login",
        "--tls-verify=false",
        "--authfile",
        &auth,
        "-u",
        "ci",
        "-p",
        TOKEN,
        &host,
    ]));
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::write(rootfs.join("hello"), b"hello from podman").unwrap();
    let tar = path("image.tar");
    let packed = Command::new("tar")
        .args(["-C", rootfs.to_str().unwrap(), "-cf", &tar, "."])
        .status()
        .unwrap();
    assert!(packed.success());
    ok(&podman(&["import", &tar, "localhost/test:1"]));
    for (tag, format) in [("oci", "oci"), ("v2s2", "v2s2")] {
        let target = format!("docker://{host}/acme/podman:{tag}");
        ok(&podman(&[
            "push",
            "--tls-verify=false",
            "--authfile",
            &auth,
            "--format",
            format,
            "localhost/test:1",
            &target,
        ]));
    }
    let served = server.http_head("/v2/acme/podman/manifests/v2s2", "content-type");
    assert_eq!(
        served,
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    ok(&podman(&["rmi", "-a", "-f"]));
    let image = format!("{host}/acme/podman:oci");
    ok(&podman(&[
        "pull",
        "--tls-verify=false",
        "--authfile",
        &auth,
        &image,
    ]));
    let images = ok(&podman(&["images", "--format", "{{.Repository}}:{{.Tag}}"]));
    assert!(images.contains(&image), "{images}");
}
