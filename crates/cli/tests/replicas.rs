//! Two real `artifactstore serve` processes sharing PostgreSQL and S3: one is killed
//! (SIGKILL) in the middle of a PATCH, and the upload goes on from the other with nothing
//! acknowledged lost. Runs only when the environment names both servers (`make test` does).

mod common;

use std::time::Duration;

use artifactstore_testkit::bytes;
use common::*;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

/// Sends and reads the JSON answer.
trait IntoJson {
    async fn into_json(self) -> Value;
}

impl IntoJson for reqwest::RequestBuilder {
    async fn into_json(self) -> Value {
        self.send().await.unwrap().json().await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and S3 (make test starts both)"]
async fn a_replica_killed_mid_patch_loses_nothing_acknowledged() {
    let database = artifactstore_testkit::require_postgres().await;
    let blobs = artifactstore_testkit::require_s3();
    let dir = tempfile::tempdir().unwrap();
    let args = ["--database-url", &database, "--blob-url", &blobs];
    let mut a = Server::start_with(&dir.path().join("a"), &args);
    let b = Server::start_with(&dir.path().join("b"), &args);
    let client = reqwest::Client::new();
    let call =
        |method: reqwest::Method, url: String| client.request(method, url).bearer_auth(TOKEN);

    let pkg: Value = call(reqwest::Method::POST, format!("{}/packages", b.url()))
        .json(&json!({"producer": "ci", "subject": "s", "retention_class": "standard"}))
        .into_json()
        .await;
    let upload: Value = call(reqwest::Method::POST, format!("{}/uploads", a.url()))
        .json(&json!({}))
        .into_json()
        .await;
    let id = upload["id"].as_str().unwrap().to_string();
    let data = bytes(26 << 20, 31);
    let acknowledged = 6 << 20;
    let r = call(reqwest::Method::PATCH, format!("{}/uploads/{id}", a.url()))
        .header("content-range", format!("bytes 0-{}/*", acknowledged - 1))
        .body(data[..acknowledged].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The next chunk goes to `a`, which dies after taking 12 of its 20 MiB.
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", a.port))
        .await
        .unwrap();
    let rest = &data[acknowledged..];
    let head = format!(
        "PATCH /uploads/{id} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Range: bytes {acknowledged}-{}/*\r\nContent-Length: {}\r\n\r\n",
        data.len() - 1,
        rest.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&rest[..12 << 20]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill();
    drop(tcp);

    // The other replica: the offset is what was acknowledged, and the upload goes on there.
    let seen: Value = call(reqwest::Method::GET, format!("{}/uploads/{id}", b.url()))
        .into_json()
        .await;
    assert_eq!(seen["offset"], acknowledged as u64);
    let r = call(reqwest::Method::PATCH, format!("{}/uploads/{id}", b.url()))
        .header(
            "content-range",
            format!("bytes {acknowledged}-{}/{}", data.len() - 1, data.len()),
        )
        .body(rest.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let digest = artifactstore_core::Sha256Digest::of(&data).hex();
    let file: Value = call(
        reqwest::Method::POST,
        format!("{}/uploads/{id}/complete", b.url()),
    )
    .json(&json!({"package_id": pkg["id"], "path": "big.bin", "sha256": digest}))
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let got = call(
        reqwest::Method::GET,
        format!(
            "{}/files/{}/download",
            b.url(),
            file["id"].as_str().unwrap()
        ),
    )
    .send()
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert!(got == data, "the file's bytes differ");
}
