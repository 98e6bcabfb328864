//! `/docs` opened in headless Chromium: the page renders every operation, and the browser's
//! network log shows no request to anything but the server. Needs Debian's `chromium`
//! (`.ci/run` installs it); without it the test says so and passes, except under CI.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")?
                .to_str()?
                .split(':')
                .map(|dir| PathBuf::from(dir).join(name))
                .find(|p| p.is_file())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium (make test runs it; .ci/run installs Debian's chromium)"]
async fn docs_render_every_operation_without_leaving_the_server() {
    let browser = chromium().expect("this test needs chromium on PATH (apt-get install chromium)");
    let app = TestApp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let net_log = dir.path().join("net.json");
    let url = format!("{}/docs/", app.base);
    let run = tokio::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--disable-features=AutofillServerCommunication",
            "--virtual-time-budget=20000",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.path().join("profile").display()
        ))
        .arg(format!("--log-net-log={}", net_log.display()))
        .arg("--dump-dom")
        .arg(&url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium timed out")
        .unwrap();
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    for path in [
        "/packages",
        "/packages/{id}",
        "/packages/{id}/files",
        "/packages/{id}/finalize",
        "/packages/{id}/manifest",
        "/packages/{id}/manifest.json",
        "/files/{id}",
        "/files/{id}/download",
        "/uploads",
        "/uploads/{id}",
        "/uploads/{id}/complete",
        "/events",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            dom.contains(&format!("data-path=\"{path}\"")),
            "operation {path} not rendered:\n{dom}"
        );
    }
    assert!(
        dom.matches("opblock-summary-method").count() >= 21,
        "not every operation rendered"
    );

    // Every request the page made went to the server. The net log also records Chromium's
    // own background traffic (update checks, sign-in, autofill); the page's requests are the
    // ones whose initiator is the page's origin, plus the navigation to the page itself.
    let log: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&net_log).unwrap()).unwrap();
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
        .as_u64()
        .unwrap();
    let origin = app.base.clone();
    let page_requests: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(start_job))
        .filter(|e| e["params"]["initiator"].as_str() == Some(origin.as_str()))
        .filter_map(|e| e["params"]["url"].as_str().map(str::to_string))
        .collect();
    assert!(
        page_requests.iter().any(|u| u.ends_with("/openapi.json")),
        "{page_requests:?}"
    );
    assert!(
        page_requests
            .iter()
            .any(|u| u.ends_with("/docs/swagger-ui-bundle.js")),
        "{page_requests:?}"
    );
    let foreign: Vec<&String> = page_requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")))
        .collect();
    assert!(
        foreign.is_empty(),
        "the page made requests outside the server: {foreign:?}"
    );
}
