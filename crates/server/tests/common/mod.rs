//! A `TestApp`: the real server on an ephemeral loopback port, on its own temporary data
//! directory (and its own PostgreSQL database and S3 prefix when the environment names those
//! servers: see `artifactstore_testkit::{fresh_postgres, fresh_s3}`), and a reqwest client with helpers for the requests every test makes.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use artifactstore_testkit::bytes;
use std::path::PathBuf;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use artifactstore_server::{Running, ServeArgs};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const ACME: &str = "tok-acme";
pub const ACME_RO: &str = "tok-acme-ro";
pub const BETA: &str = "tok-beta";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    args: ServeArgs,
    server: Option<Running>,
}

pub struct Builder {
    args: ServeArgs,
    local_blobs: bool,
}

impl Builder {
    /// Blobs in the data directory whatever the environment says (for tests that reach into
    /// the blob directory).
    pub fn local_blobs(mut self) -> Self {
        self.local_blobs = true;
        self
    }

    pub fn anon_read(mut self) -> Self {
        self.args.anon_read = Some(true);
        self.args.anon_tenant = Some("acme".into());
        self
    }

    /// Anonymous reads with no tenant named: every tenant's data.
    pub fn anon_read_all(mut self) -> Self {
        self.args.anon_read = Some(true);
        self.args.anon_tenant = None;
        self
    }

    /// Any other setting, on the serve arguments themselves.
    pub fn args(mut self, change: impl FnOnce(&mut ServeArgs)) -> Self {
        change(&mut self.args);
        self
    }

    pub fn max_file_bytes(mut self, n: u64) -> Self {
        self.args.max_file_bytes = Some(n);
        self
    }

    pub fn max_json_bytes(mut self, n: usize) -> Self {
        self.args.max_json_bytes = Some(n);
        self
    }

    pub fn upload_ttl_secs(mut self, n: u64) -> Self {
        self.args.upload_ttl_secs = Some(n);
        self
    }

    pub async fn start(self) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let mut args = self.args;
        args.data_dir = Some(dir.path().to_path_buf());
        if args.database_url.is_none() {
            args.database_url = artifactstore_testkit::fresh_postgres().await;
        }
        if self.local_blobs {
            args.blob_url = Some(format!("file://{}", dir.path().join("blobs").display()));
        } else if args.blob_url.is_none() {
            args.blob_url = artifactstore_testkit::fresh_s3();
        }
        let server = artifactstore_server::start(args.clone().resolve().unwrap())
            .await
            .unwrap();
        let base = format!("http://{}", server.addr);
        TestApp {
            base,
            client: reqwest::Client::new(),
            dir,
            args,
            server: Some(server),
        }
    }
}

impl TestApp {
    pub fn builder() -> Builder {
        Builder {
            args: ServeArgs {
                listen: Some("127.0.0.1:0".into()),
                tokens: Some(format!("acme:{ACME},acme:{ACME_RO}:ro,beta:{BETA}")),
                ..Default::default()
            },
            local_blobs: false,
        }
    }

    pub async fn start() -> Self {
        Self::builder().start().await
    }

    /// Stops the server (draining requests) and starts it again on the same data and port.
    pub async fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
        let mut args = self.args.clone();
        args.listen = Some(self.base.trim_start_matches("http://").to_string());
        args.data_dir = Some(self.dir.path().to_path_buf());
        self.server = Some(
            artifactstore_server::start(args.resolve().unwrap())
                .await
                .unwrap(),
        );
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.req(Method::GET, path, Some(ACME))
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.req(Method::POST, path, Some(ACME))
    }

    pub async fn create_package(&self) -> Value {
        self.create_package_with(json!({
            "producer": "ci/build-42", "subject": "app@1.2.3",
            "retention_class": "standard", "metadata": {"git.sha": "abc123"}
        }))
        .await
    }

    /// The id of a new package made by [`create_package`](Self::create_package).
    pub async fn package_id(&self) -> String {
        let package = self.create_package().await;
        package["id"].as_str().unwrap().to_string()
    }

    /// The text of a `GET` of `path` (with the acme token).
    pub async fn text(&self, path: &str) -> String {
        self.get(path).send().await.unwrap().text().await.unwrap()
    }

    pub async fn create_package_with(&self, body: Value) -> Value {
        let r = self.post("/packages").json(&body).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    /// Single-shot multipart ingest; returns the response.
    pub async fn upload_file(&self, package: &str, path: &str, bytes: Vec<u8>) -> Response {
        let form = reqwest::multipart::Form::new()
            .text("path", path.to_string())
            .part("file", reqwest::multipart::Part::bytes(bytes));
        self.post(&format!("/packages/{package}/files"))
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn add_file(&self, package: &str, path: &str, bytes: Vec<u8>) -> Value {
        let r = self.upload_file(package, path, bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
        r.json().await.unwrap()
    }

    pub async fn finalize(&self, package: &str) -> Value {
        let r = self
            .post(&format!("/packages/{package}/finalize"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// All events of acme since `since`, as JSON.
    pub async fn events_json(&self, since: u64) -> Value {
        let r = self
            .get(&format!("/events?since={since}&wait=0&limit=1000"))
            .header("accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }
}

/// Sends and reads the JSON body, whatever the status.
pub async fn json_of(request: RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Asserts a problem document of `status`, and returns it.
pub async fn problem(response: Response, status: u16) -> Value {
    assert_eq!(response.status().as_u16(), status, "wrong status");
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("application/problem+json".to_string())
    );
    let body: Value = response.json().await.unwrap();
    for key in ["type", "title", "status", "detail"] {
        assert!(body.get(key).is_some(), "problem without {key}: {body}");
    }
    assert_eq!(body["status"], status);
    body
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    artifactstore_core::Sha256Digest::of(bytes).hex()
}

/// Relays loopback connections on `addr` to `target`; [`cut`](Relay::cut) closes them all.
pub struct Relay {
    pub addr: SocketAddr,
    target: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Relay {
    pub async fn start(addr: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self {
            addr,
            target,
            task: Some(task),
        }
    }

    /// Closes the listener and every relayed connection (dropping the task drops them).
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    pub async fn restore(&mut self) {
        *self = Self::start(self.addr, self.target).await;
    }
}

/// Retries `check` every 100 ms until it holds or `within` passes.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
