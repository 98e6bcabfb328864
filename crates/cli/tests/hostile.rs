//! The real binary against hostile and careless clients: slow request heads, idle and
//! stalled connections, the connection cap, a preamble flood, junk methods, thousands of
//! long-polls, huge headers, stalled and trickling bodies (both ways, HTTP/2 flow control
//! included), a shutdown with a request stuck in flight, and
//! HTTPS end to end. Each test checks that a normal client keeps being answered and that
//! memory stays bounded. Bounds are generous (seconds, not milliseconds): this is a
//! functional test, not a benchmark.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn auth() -> String {
    format!("Authorization: Bearer {TOKEN}\r\n")
}

/// One complete request on a fresh connection; the response head and body as text.
async fn request(port: u16, head: &str) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut tcp).await
}

/// Reads one response whose body has a Content-Length (or none, up to EOF).
async fn read_response(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => break,
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&got).to_string()
}

/// An authenticated `GET` on a fresh connection.
async fn get(port: u16, path: &str) -> String {
    request(
        port,
        &format!(
            "GET {path} HTTP/1.1\r\nHost: t\r\n{}Connection: close\r\n\r\n",
            auth()
        ),
    )
    .await
}

/// Whether the server closed `tcp` (EOF or reset) within `within`.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// A normal client's `GET /packages`, answered `200`, and how long it took.
async fn normal_client(port: u16) -> Duration {
    let started = Instant::now();
    let response = get(port, "/packages").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    started.elapsed()
}

/// Prints the server's memory after `what` and asserts its peak stayed under `mib`.
fn memory_stayed_under(server: &Server, what: &str, mib: u64) {
    let (rss, peak) = server.memory_kib();
    eprintln!("{what}: rss {rss} KiB, peak {peak} KiB");
    assert!(peak < mib * 1024, "{what}: peak RSS {peak} KiB");
}

fn start(dir: &Path, args: &[&str]) -> Server {
    Server::start_with(&dir.join("data"), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_idle_connections_are_cut_and_others_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &["--header-timeout-secs", "2", "--idle-timeout-secs", "3"],
    );
    let (rss_before, _) = server.memory_kib();
    // Half a request head each, then nothing.
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        tcp.write_all(b"GET /packages HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // And connections that send nothing at all.
    for _ in 0..500 {
        slow.push(
            TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        );
    }
    let took = normal_client(server.port).await;
    assert!(took < Duration::from_secs(5), "{took:?}");
    for tcp in &mut slow {
        assert!(
            closed_within(tcp, Duration::from_secs(8)).await,
            "a slow head outlived the header timeout"
        );
    }
    // A keep-alive connection with nothing in flight is closed after the idle timeout, and
    // not before the header timeout would have struck.
    let mut idle = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_response(&mut idle).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let opened = Instant::now();
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_millis(2500),
        "closed after {lived:?}"
    );
    memory_stayed_under(
        &server,
        &format!("1,000 slow connections (rss before {rss_before} KiB)"),
        256,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_idle_ones_make_room_and_busy_ones_get_503() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &["--max-connections", "20", "--header-timeout-secs", "30"],
    );
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(
            TcpStream::connect(("127.0.0.1", server.port))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every slot holds an idle connection: the oldest is closed, the new client is served.
    normal_client(server.port).await;
    let mut evicted = 0;
    for tcp in &mut idle {
        if closed_within(tcp, Duration::from_millis(200)).await {
            evicted += 1;
        }
    }
    assert!(evicted >= 1, "no idle connection made room");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Every slot busy with a long-poll: a new connection is answered 503 with Retry-After.
    let mut busy = Vec::new();
    for _ in 0..20 {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let head = format!("GET /events?wait=30 HTTP/1.1\r\nHost: t\r\n{}\r\n", auth());
        tcp.write_all(head.as_bytes()).await.unwrap();
        busy.push(tcp);
    }
    // Time for all 20 heads to be read, so that none is evictable.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refused = request(server.port, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(refused.contains("problem/overloaded"), "{refused}");
    drop(busy);
    tokio::time::sleep(Duration::from_millis(300)).await;
    normal_client(server.port).await;
}

/// Opens an upload session and returns its id.
async fn new_upload(port: u16) -> String {
    let created = request(
        port,
        &format!(
            "POST /uploads HTTP/1.1\r\nHost: t\r\n{}Content-Length: 0\r\nConnection: close\r\n\r\n",
            auth()
        ),
    )
    .await;
    let start = created.find("\"id\":\"").unwrap() + 6;
    created[start..start + 30].to_string()
}

/// Creates a package and returns its id.
async fn package(port: u16) -> String {
    let body = r#"{"producer":"p","subject":"s","retention_class":"standard"}"#;
    let response = request(
        port,
        &format!(
            "POST /packages HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            auth(),
            body.len()
        ),
    )
    .await;
    let start = response.find("\"id\":\"").unwrap() + 6;
    response[start..start + 30].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preamble_flood_is_refused_with_memory_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let pkg = package(server.port).await;
    const FLOOD: usize = 256 << 20;
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /packages/{pkg}/files HTTP/1.1\r\nHost: t\r\n{}\
         Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: {FLOOD}\r\n\r\n",
        auth()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), read.read_to_end(&mut got)).await;
        String::from_utf8_lossy(&got).to_string()
    });
    let zeros = vec![0u8; 1 << 20];
    let mut sent = 0;
    while sent < FLOOD {
        if write.write_all(&zeros).await.is_err() {
            break;
        }
        sent += zeros.len();
    }
    drop(write);
    let response = reader.await.unwrap();
    // The server may reset the connection while the flood is still arriving; what it did
    // answer is the problem document.
    if !response.is_empty() {
        assert!(response.starts_with("HTTP/1.1 413"), "{response}");
        assert!(response.contains("multipart-head-too-large"), "{response}");
    }
    memory_stayed_under(
        &server,
        &format!("a preamble flood ({sent} bytes sent)"),
        128,
    );
    let files = get(server.port, &format!("/packages/{pkg}/files")).await;
    assert!(files.contains("\"items\":[]"), "{files}");
    normal_client(server.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_methods_and_huge_headers_leave_metrics_and_server_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    for i in 0..2000 {
        let head = format!("JUNK{i} /packages/x{i} HTTP/1.1\r\nHost: t\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let response = read_response(&mut tcp).await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");
    }
    let metrics = request(
        server.port,
        "GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(metrics.contains("method=\"other\""), "{metrics}");
    assert!(!metrics.contains("JUNK"));
    assert!(
        metrics.len() < 16 * 1024,
        "metrics grew to {} bytes",
        metrics.len()
    );

    // A 1 MiB header, and 200 headers: refused, and the server goes on.
    let huge = format!(
        "GET /packages HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let _ = tcp.write_all(huge.as_bytes()).await;
    let response = read_response(&mut tcp).await;
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 431"),
        "{response}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let response = request(
        server.port,
        &format!("GET /packages HTTP/1.1\r\nHost: t\r\n{many}\r\n"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    normal_client(server.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_long_polls_are_capped_and_others_are_answered() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &["--max-pollers", "1500", "--max-pollers-per-tenant", "1000"],
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..1500 {
        let mut tcp = TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let head = format!(
            "GET /events?wait=30 HTTP/1.1\r\nHost: t\r\n{}Accept: application/json\r\n\r\n",
            auth()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(40), tcp.read(&mut buf)).await;
            let text = match read {
                Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
                _ => String::new(),
            };
            let _ = tx.send(text);
        });
    }
    drop(tx);
    // The refusals come at once; only then is every other poll surely waiting.
    let mut refused = 0;
    while refused < 500 {
        let text = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("500 polls refused")
            .unwrap();
        assert!(
            text.starts_with("HTTP/1.1 429"),
            "answered before any event: {text}"
        );
        refused += 1;
    }
    let took = normal_client(server.port).await;
    // One commit answers every waiting poll.
    package(server.port).await;
    let mut answered = 0;
    while let Some(text) = rx.recv().await {
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("package.created"), "{text}");
        answered += 1;
    }
    assert_eq!(answered, 1000, "the per-tenant cap is 1000 waiting polls");
    memory_stayed_under(
        &server,
        &format!("1,500 polls, GET /packages in {took:?}"),
        256,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_are_cut_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // No rate floor here: the slow client below sends a byte a second.
    let server = start(
        dir.path(),
        &["--body-timeout-secs", "2", "--min-body-rate", "0"],
    );
    let pkg = package(server.port).await;
    let upload = new_upload(server.port).await;

    // A chunk that promises 1 MiB, sends 10 bytes and stalls.
    let mut patch = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "PATCH /uploads/{upload} HTTP/1.1\r\nHost: t\r\n{}Content-Length: 1048576\r\n\r\n0123456789",
        auth()
    );
    patch.write_all(head.as_bytes()).await.unwrap();
    // A single-shot file that stalls after 200 KiB of content.
    let mut post = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let preamble = "--XYZ\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\nstalled.bin\r\n\
                    --XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n";
    let head = format!(
        "POST /packages/{pkg}/files HTTP/1.1\r\nHost: t\r\n{}\
         Content-Type: multipart/form-data; boundary=XYZ\r\nContent-Length: 99999999\r\n\r\n{preamble}",
        auth()
    );
    post.write_all(head.as_bytes()).await.unwrap();
    post.write_all(&vec![1u8; 200 * 1024]).await.unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut patch, Duration::from_secs(10)).await);
    assert!(closed_within(&mut post, Duration::from_secs(10)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1500), "cut after {took:?}");

    let status = get(server.port, &format!("/uploads/{upload}")).await;
    assert!(status.contains("\"offset\":0"), "{status}");
    let files = get(server.port, &format!("/packages/{pkg}/files")).await;
    assert!(files.contains("\"items\":[]"), "{files}");
    let tmp = server.data.join("blobs").join("tmp");
    let leftovers = std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "temp files left in {}", tmp.display());

    // A slow but honest client (a byte every second, slower than nothing-for-2s would
    // allow only if it stopped) still gets its chunk in.
    let mut slow = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "PATCH /uploads/{upload} HTTP/1.1\r\nHost: t\r\n{}Content-Length: 4\r\nConnection: close\r\n\r\n",
        auth()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    for byte in b"abcd" {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        slow.write_all(&[*byte]).await.unwrap();
    }
    let response = read_response(&mut slow).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"offset\":4"), "{response}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_stuck_requests_only_until_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(
        dir.path(),
        &["--shutdown-grace-secs", "2", "--body-timeout-secs", "60"],
    );
    let mut stuck = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let head = format!(
        "POST /uploads HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        auth()
    );
    stuck.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let took = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "stopped after {took:?}"
    );
}

#[test]
fn https_end_to_end_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    // A private CA, and a server certificate for 127.0.0.1 signed by it.
    let ca_key = dir.path().join("ca-key.pem");
    let ca_cert = dir.path().join("ca.pem");
    let csr = dir.path().join("server.csr");
    let ext = dir.path().join("server.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let p = |path: &Path| path.to_str().unwrap().to_string();
    let steps: Vec<Vec<String>> = vec![
        vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ]
        .into_iter()
        .map(String::from)
        .chain(["-days", "2", "-subj", "/CN=test CA", "-keyout"].map(String::from))
        .chain([p(&ca_key), "-out".into(), p(&ca_cert)])
        .collect(),
        vec![
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ]
        .into_iter()
        .map(String::from)
        .chain(["-subj", "/CN=localhost", "-keyout"].map(String::from))
        .chain([p(&key), "-out".into(), p(&csr)])
        .collect(),
        vec!["x509", "-req", "-days", "2", "-in"]
            .into_iter()
            .map(String::from)
            .chain([
                p(&csr),
                "-CA".into(),
                p(&ca_cert),
                "-CAkey".into(),
                p(&ca_key),
            ])
            .chain(["-CAcreateserial".into(), "-extfile".into(), p(&ext)])
            .chain(["-out".into(), p(&cert)])
            .collect(),
    ];
    for args in steps {
        let made = std::process::Command::new("openssl")
            .args(&args)
            .output()
            .expect("openssl is needed for the TLS test");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    let server = start(
        dir.path(),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(server.url().starts_with("https://"));
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), b"over tls").unwrap();
    std::fs::write(src.join("b.bin"), artifactstore_testkit::bytes(300_000, 5)).unwrap();
    let ca = ca_cert.to_str().unwrap();
    // Without the CA, the certificate is not trusted: a network failure, nothing sent.
    let refused = server.push(&src, &[]);
    assert_eq!(refused.status.code(), Some(7), "{refused:?}");
    let pushed = server.push(&src, &["--ca-cert", ca, "--json"]);
    assert!(pushed.status.success(), "{pushed:?}");
    let pushed: serde_json::Value = serde_json::from_slice(&pushed.stdout).unwrap();
    let id = pushed["package_id"].as_str().unwrap();
    let out = dir.path().join("out");
    let pulled = server
        .cli(&["pull", id, out.to_str().unwrap()])
        .env("ARTIFACTSTORE_CA_CERT", ca)
        .output()
        .unwrap();
    assert!(pulled.status.success(), "{pulled:?}");
    assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"over tls");
    assert_eq!(
        std::fs::read(out.join("b.bin")).unwrap(),
        artifactstore_testkit::bytes(300_000, 5)
    );
}

/// An HTTP/2 connection (prior knowledge, as h2c) that grants the server no flow-control
/// window, with one `GET /healthz` whose response headers have come: its body can never be
/// sent. Returns the task driving the connection, which ends when the server closes it.
async fn starved_h2(port: u16) -> (tokio::task::JoinHandle<()>, h2::RecvStream) {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .unwrap();
    let driver = tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::get(format!("http://127.0.0.1:{port}/healthz"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    (driver, response.into_body())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_starved_of_window_make_room_and_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &["--max-connections", "16", "--body-timeout-secs", "3"],
    );
    let mut starved = Vec::new();
    for _ in 0..16 {
        starved.push(starved_h2(server.port).await);
    }
    // Every slot holds a busy connection whose body has moved nothing for over 2 s: a new
    // client gets the slot of one of them instead of a 503.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let took = normal_client(server.port).await;
    eprintln!("a normal client beside 16 starved HTTP/2 connections: answered in {took:?}");
    // And each starved connection is closed once a window of 3 s has moved nothing.
    let deadline = Instant::now() + Duration::from_secs(15);
    for (driver, _body) in starved {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            tokio::time::timeout(left, driver).await.is_ok(),
            "a starved HTTP/2 connection was still open"
        );
    }
    normal_client(server.port).await;
}

/// Creates a file of `len` bytes in a new package through an upload session; its id.
async fn file_of(port: u16, len: usize) -> String {
    let pkg = package(port).await;
    let upload = new_upload(port).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "PATCH /uploads/{upload} HTTP/1.1\r\nHost: t\r\n{}Content-Length: {len}\r\nConnection: close\r\n\r\n",
        auth()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&vec![7u8; len]).await.unwrap();
    let patched = read_response(&mut tcp).await;
    assert!(patched.starts_with("HTTP/1.1 200"), "{patched}");
    let body = format!(r#"{{"package_id":"{pkg}","path":"big.bin"}}"#);
    let completed = request(
        port,
        &format!(
            "POST /uploads/{upload}/complete HTTP/1.1\r\nHost: t\r\n{}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            auth(),
            body.len()
        ),
    )
    .await;
    assert!(completed.starts_with("HTTP/1.1 201"), "{completed}");
    let start = completed.find("\"id\":\"file_").unwrap() + 6;
    completed[start..start + 31].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_read_a_trickle_at_a_time_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    // A floor of 1 MB/s over windows of 4 s, so that this test is short: the reader below
    // reads in bursts big enough to wake the server's writes (a third of the socket's send
    // buffer, which grows to megabytes on loopback), at a third of that floor.
    let server = start(
        dir.path(),
        &["--body-timeout-secs", "4", "--min-body-rate", "1000000"],
    );
    let len = 32 << 20;
    let file = file_of(server.port, len).await;
    // A small receive buffer, so the server's writes soon wait for this client's reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut tcp = socket
        .connect(([127, 0, 0, 1], server.port).into())
        .await
        .unwrap();
    let head = format!(
        "GET /files/{file}/download HTTP/1.1\r\nHost: t\r\n{}Connection: close\r\n\r\n",
        auth()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    // 1 MiB every 3 s: the socket drains often enough that a write succeeds within every
    // 4 s (a write deadline alone never fires: with `--min-body-rate 0` this reader gets the
    // whole file), at a third of the floor.
    const BURST: usize = 1 << 20;
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0usize;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut burst = 0;
        while burst < BURST {
            let want = (BURST - burst).min(buf.len());
            match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf[..want])).await {
                Ok(Ok(n)) if n > 0 => burst += n,
                _ => break,
            }
        }
        read += burst;
    }
    // Then read as fast as possible: a connection the server cut ends before the file does
    // (what the kernel had queued still arrives).
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => break,
        }
    }
    eprintln!("trickling reader got {read} of {len} bytes (head included)");
    assert!(read < len, "the trickling reader was sent the whole file");
    normal_client(server.port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_request_body_is_cut_and_a_slow_honest_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &["--body-timeout-secs", "2"]);
    let upload = new_upload(server.port).await;
    let patch = |len: usize| {
        format!(
            "PATCH /uploads/{upload} HTTP/1.1\r\nHost: t\r\n{}Content-Length: {len}\r\nConnection: close\r\n\r\n",
            auth()
        )
    };
    // 10 bytes every 300 ms: never silent for 2 s, far under 500 B/s.
    let mut trickle = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    trickle.write_all(patch(4096).as_bytes()).await.unwrap();
    let started = Instant::now();
    let cut = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if trickle.write_all(&[1u8; 10]).await.is_err() {
            break true;
        }
        if closed_within(&mut trickle, Duration::from_millis(1)).await {
            break true;
        }
        if started.elapsed() > Duration::from_secs(30) {
            break false;
        }
    };
    eprintln!("trickling body cut after {:?}", started.elapsed());
    assert!(cut, "a 33 B/s body was still being taken after 30 s");
    let status = get(server.port, &format!("/uploads/{upload}")).await;
    assert!(status.contains("\"offset\":0"), "{status}");

    // 200 bytes every 100 ms (2,000 B/s) for 4 s: slow, honest, taken whole.
    let mut honest = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    honest.write_all(patch(8000).as_bytes()).await.unwrap();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        honest.write_all(&[2u8; 200]).await.unwrap();
    }
    let response = read_response(&mut honest).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"offset\":8000"), "{response}");
}

/// A socket whose reads and writes stop (stay pending) once `frozen` is set, until it is
/// cleared: a peer that vanished without closing.
struct Freezable {
    inner: TcpStream,
    frozen: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Freezable {
    fn stalled(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.frozen.load(std::sync::atomic::Ordering::Acquire) {
            // Looked at again shortly: a frozen peer answers nothing, a thawed one goes on.
            let waker = cx.waker().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                waker.wake();
            });
            return true;
        }
        false
    }
}

impl tokio::io::AsyncRead for Freezable {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.stalled(cx) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Freezable {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.stalled(cx) {
            return std::task::Poll::Pending;
        }
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// An HTTP/2 peer that vanishes (stops answering, never closes) while its long-poll waits is
/// noticed by the server's keep-alive PING going unanswered, and its connection closed, long
/// before the long-poll's own end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_http2_peer_is_found_by_keep_alive_pings() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    // PING after 1 s of silence (half the idle timeout), PONG due within 2 s.
    let server = start(
        dir.path(),
        &["--idle-timeout-secs", "2", "--body-timeout-secs", "2"],
    );
    let tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .unwrap();
    let frozen = std::sync::Arc::new(AtomicBool::new(false));
    let io = Freezable {
        inner: tcp,
        frozen: frozen.clone(),
    };
    let (mut client, connection) = h2::client::handshake(io).await.unwrap();
    let driver = tokio::spawn(connection);
    let request = http::Request::get(format!("http://127.0.0.1:{}/events?wait=30", server.port))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    frozen.store(true, Ordering::Release);
    // Two intervals and a timeout, with room: the server has pinged and given up by then.
    tokio::time::sleep(Duration::from_secs(8)).await;
    frozen.store(false, Ordering::Release);
    let answered = tokio::time::timeout(Duration::from_secs(5), response).await;
    match answered {
        Ok(Err(_)) => {}
        Ok(Ok(r)) => panic!(
            "the long-poll was answered {} on a connection thought alive",
            r.status()
        ),
        Err(_) => panic!("the connection is still open: no keep-alive ping closed it"),
    }
    let _ = driver.await;
}
