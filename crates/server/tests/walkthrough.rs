//! Runs the README's curl walkthrough, exactly as written, against a live server, so the
//! walkthrough cannot rot.

mod common;

use common::*;

/// The first ```bash block after the walkthrough heading.
fn walkthrough() -> String {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    let section = readme
        .split("## Walkthrough with curl")
        .nth(1)
        .expect("walkthrough section");
    let block = section.split("```bash\n").nth(1).expect("bash block");
    block.split("\n```").next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_runs() {
    let app = TestApp::start().await;
    let script = walkthrough();
    let work = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("AS", &app.base)
        .env("TOKEN", ACME)
        .output()
        .await
        .expect("bash and curl must be installed");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walkthrough failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        "package pkg_",
        "\"path\":\"docs/hello.txt\"",
        "upload-offset: 60000",
        "\"path\":\"bin/big.bin\"",
        "\"state\":\"finalized\"",
        "etag: \"sha256:",
        "\"schema\":\"artifactstore.manifest/v1\"",
        "hello",
        "download verified",
        "\"type\":\"package.finalized\"",
        "\"held\":true",
        "\"held\":false",
        "\"open_uploads\":0",
        "deleted",
    ] {
        assert!(
            stdout.to_lowercase().contains(&expected.to_lowercase()),
            "missing {expected:?} in\n{stdout}"
        );
    }
}
