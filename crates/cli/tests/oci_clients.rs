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
    let tags = list_tags(&image, &creds);
    assert_eq!(tags["Tags"], serde_json::json!([]));
}
