//! `artifactstore-bench`: the load generator of `bench/run.sh`. The same client drives
//! artifactstore and its peers (the CNCF distribution registry, nginx) so their figures
//! compare. Each run prints one JSON object on stdout; the script takes medians and ratios.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifactstore_core::{Sha256Digest, Sha256Hasher};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use reqwest::{Client, Method, RequestBuilder, header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const BLOCK: usize = 256 * 1024;
const REPOSITORY: &str = "bench/blobs";

#[derive(Parser)]
struct Cli {
    /// Base URL of the system under test.
    #[arg(long)]
    base: String,
    /// Bearer token (artifactstore).
    #[arg(long)]
    token: Option<String>,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Ingest {
    /// artifactstore, one multipart POST.
    AsMultipart,
    /// artifactstore, an upload session with one PATCH.
    AsPatch,
    /// artifactstore, an upload session in `--chunk` PATCHes.
    AsChunked,
    /// distribution registry, POST then one monolithic PUT.
    RegistryMonolithic,
    /// distribution registry, POST, `--chunk` PATCHes, PUT.
    RegistryChunked,
    /// nginx WebDAV PUT (no hash, no fsync).
    NginxPut,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Small {
    As,
    Registry,
}

#[derive(Subcommand)]
enum Workload {
    /// W1/W2: one file in one request or in chunks; MB/s.
    Ingest {
        #[arg(long, value_enum)]
        system: Ingest,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 16 * 1024 * 1024)]
        chunk: u64,
    },
    /// W3: many small files at a concurrency; files/s.
    Small {
        #[arg(long, value_enum)]
        system: Small,
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 4096)]
        size: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// W4: GET a path to nowhere; MB/s.
    Download {
        #[arg(long)]
        path: String,
    },
    /// W5: random `--block` byte ranges of a path of `--size` bytes; req/s, p50, p99.
    Ranges {
        #[arg(long)]
        path: String,
        #[arg(long)]
        size: u64,
        #[arg(long, default_value_t = 4096)]
        block: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
    /// W6: long-pollers waiting on /events; latency from a finalize to each poller.
    Pollers {
        #[arg(long, default_value_t = 1000)]
        pollers: usize,
    },
    /// W7 set-up: packages with metadata and a file each.
    Populate {
        #[arg(long, default_value_t = 100_000)]
        packages: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
    },
    /// W7: filtered listing latency (producer, metadata, contains).
    Queries {
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Edge: a normal client's GET /packages latency while `--slow` connections trickle half
    /// request heads and `--pollers` long-polls wait (each reconnects when cut or answered);
    /// with `--pid`, the server's resident memory too.
    Siege {
        #[arg(long, default_value_t = 3000)]
        slow: usize,
        #[arg(long, default_value_t = 3000)]
        pollers: usize,
        #[arg(long, default_value_t = 500)]
        requests: usize,
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Upload a file to a system and print where it can be read (set-up of W4/W5).
    Place {
        #[arg(long, value_enum)]
        system: Ingest,
        #[arg(long)]
        file: PathBuf,
    },
}

struct Target {
    base: String,
    token: Option<String>,
    http: Client,
}

impl Target {
    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let r = self.http.request(method, url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let http = Client::builder()
        .pool_max_idle_per_host(2048)
        .tcp_nodelay(true)
        .build()?;
    let target = Arc::new(Target {
        base: cli.base.trim_end_matches('/').to_string(),
        token: cli.token,
        http,
    });
    let out = match cli.workload {
        Workload::Ingest {
            system,
            file,
            chunk,
        } => {
            let size = tokio::fs::metadata(&file).await?.len();
            let digest = hash_file(&file).await?;
            let started = Instant::now();
            ingest(&target, system, &file, size, chunk, digest).await?;
            let secs = started.elapsed().as_secs_f64();
            json!({"mbps": size as f64 / secs / 1e6, "secs": secs})
        }
        Workload::Place { system, file } => {
            let size = tokio::fs::metadata(&file).await?.len();
            let digest = hash_file(&file).await?;
            let location = ingest(&target, system, &file, size, 16 * 1024 * 1024, digest).await?;
            json!({"path": location})
        }
        Workload::Small {
            system,
            count,
            size,
            concurrency,
        } => small(&target, system, count, size, concurrency).await?,
        Workload::Download { path } => {
            let started = Instant::now();
            let response = target
                .req(Method::GET, &path)
                .send()
                .await?
                .error_for_status()?;
            let mut body = response.bytes_stream();
            let mut total = 0u64;
            while let Some(chunk) = body.next().await {
                total += chunk?.len() as u64;
            }
            let secs = started.elapsed().as_secs_f64();
            json!({"mbps": total as f64 / secs / 1e6, "bytes": total, "secs": secs})
        }
        Workload::Ranges {
            path,
            size,
            block,
            concurrency,
            requests,
        } => ranges(&target, &path, size, block, concurrency, requests).await?,
        Workload::Pollers { pollers } => long_pollers(&target, pollers).await?,
        Workload::Populate {
            packages,
            concurrency,
        } => populate(&target, packages, concurrency).await?,
        Workload::Queries { requests } => queries(&target, requests).await?,
        Workload::Siege {
            slow,
            pollers,
            requests,
            pid,
        } => siege(&target, slow, pollers, requests, pid).await?,
    };
    println!("{out}");
    Ok(())
}

async fn hash_file(path: &PathBuf) -> Result<Sha256Digest> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

async fn body(path: &PathBuf, offset: u64, len: u64) -> Result<reqwest::Body> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), BLOCK);
    Ok(reqwest::Body::wrap_stream(stream))
}

async fn new_package(target: &Target, metadata: Value) -> Result<String> {
    let body = json!({"producer": "bench", "subject": "bench@1", "retention_class": "standard", "metadata": metadata});
    let created: Value = target
        .req(Method::POST, "/packages")
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(created["id"].as_str().unwrap_or_default().to_string())
}

/// Uploads `file`; returns the path it can be downloaded from.
async fn ingest(
    target: &Target,
    system: Ingest,
    file: &PathBuf,
    size: u64,
    chunk: u64,
    digest: Sha256Digest,
) -> Result<String> {
    match system {
        Ingest::AsMultipart => {
            let pkg = new_package(target, json!({})).await?;
            let form = reqwest::multipart::Form::new()
                .text("path", "big.bin")
                .part(
                    "file",
                    reqwest::multipart::Part::stream_with_length(body(file, 0, size).await?, size),
                );
            let f: Value = target
                .req(Method::POST, &format!("/packages/{pkg}/files"))
                .multipart(form)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(format!(
                "/files/{}/download",
                f["id"].as_str().unwrap_or_default()
            ))
        }
        Ingest::AsPatch | Ingest::AsChunked => {
            let pkg = new_package(target, json!({})).await?;
            let up: Value = target
                .req(Method::POST, "/uploads")
                .json(&json!({"size": size}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let url = format!("/uploads/{}", up["id"].as_str().unwrap_or_default());
            let step = if system == Ingest::AsPatch {
                size.max(1)
            } else {
                chunk
            };
            let mut offset = 0;
            while offset < size {
                let len = step.min(size - offset);
                target
                    .req(Method::PATCH, &url)
                    .header(
                        header::CONTENT_RANGE,
                        format!("bytes {offset}-{}/{size}", offset + len - 1),
                    )
                    .header(header::CONTENT_LENGTH, len)
                    .body(body(file, offset, len).await?)
                    .send()
                    .await?
                    .error_for_status()?;
                offset += len;
            }
            let done = json!({"package_id": pkg, "path": "big.bin", "sha256": digest.hex()});
            let f: Value = target
                .req(Method::POST, &format!("{url}/complete"))
                .json(&done)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(format!(
                "/files/{}/download",
                f["id"].as_str().unwrap_or_default()
            ))
        }
        Ingest::RegistryMonolithic | Ingest::RegistryChunked => {
            let mut location = registry_start(target).await?;
            if system == Ingest::RegistryChunked {
                let mut offset = 0;
                while offset < size {
                    let len = chunk.min(size - offset);
                    let r = target
                        .req(Method::PATCH, &location)
                        .header(header::CONTENT_TYPE, "application/octet-stream")
                        .header(
                            header::CONTENT_RANGE,
                            format!("{offset}-{}", offset + len - 1),
                        )
                        .header(header::CONTENT_LENGTH, len)
                        .body(body(file, offset, len).await?)
                        .send()
                        .await?
                        .error_for_status()?;
                    location = absolute(
                        target,
                        r.headers()
                            .get(header::LOCATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or(&location),
                    );
                    offset += len;
                }
                registry_put(
                    target,
                    &location,
                    digest,
                    reqwest::Body::from(Vec::new()),
                    0,
                )
                .await?;
            } else {
                registry_put(target, &location, digest, body(file, 0, size).await?, size).await?;
            }
            Ok(format!(
                "/v2/{REPOSITORY}/blobs/{}",
                digest.content_address()
            ))
        }
        Ingest::NginxPut => {
            target
                .req(Method::PUT, "/dav/big.bin")
                .header(header::CONTENT_LENGTH, size)
                .body(body(file, 0, size).await?)
                .send()
                .await?
                .error_for_status()?;
            Ok("/dav/big.bin".into())
        }
    }
}

fn absolute(target: &Target, location: &str) -> String {
    if location.starts_with("http") {
        location.to_string()
    } else {
        format!("{}{location}", target.base)
    }
}

async fn registry_start(target: &Target) -> Result<String> {
    let r = target
        .req(Method::POST, &format!("/v2/{REPOSITORY}/blobs/uploads/"))
        .send()
        .await?
        .error_for_status()?;
    let location = r
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location")?;
    Ok(absolute(target, location))
}

async fn registry_put(
    target: &Target,
    location: &str,
    digest: Sha256Digest,
    body: reqwest::Body,
    len: u64,
) -> Result<()> {
    let sep = if location.contains('?') { '&' } else { '?' };
    target
        .req(
            Method::PUT,
            &format!("{location}{sep}digest={}", digest.content_address()),
        )
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn small(
    target: &Arc<Target>,
    system: Small,
    count: usize,
    size: usize,
    concurrency: usize,
) -> Result<Value> {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64;
    let files: Vec<Vec<u8>> = (0..count)
        .map(|i| artifactstore_testkit::bytes(size, seed ^ (i as u64 + 1)))
        .collect();
    let pkg = match system {
        Small::As => new_package(target, json!({})).await?,
        Small::Registry => String::new(),
    };
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(files.into_iter().enumerate())
        .map(|(i, data)| {
            let (target, pkg) = (target.clone(), pkg.clone());
            async move {
                match system {
                    Small::As => {
                        let form = reqwest::multipart::Form::new()
                            .text("path", format!("f{i}"))
                            .part("file", reqwest::multipart::Part::bytes(data));
                        target
                            .req(Method::POST, &format!("/packages/{pkg}/files"))
                            .multipart(form)
                            .send()
                            .await?
                            .error_for_status()?;
                    }
                    Small::Registry => {
                        let digest = Sha256Digest::of(&data);
                        let location = registry_start(&target).await?;
                        let len = data.len() as u64;
                        registry_put(&target, &location, digest, reqwest::Body::from(data), len)
                            .await?;
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(json!({"files_per_s": count as f64 / secs, "secs": secs}))
}

fn percentiles(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    (at(0.5), at(0.99))
}

async fn ranges(
    target: &Arc<Target>,
    path: &str,
    size: u64,
    block: u64,
    concurrency: usize,
    requests: usize,
) -> Result<Value> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let offsets: Vec<u64> = (0..requests)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % (size - block)
        })
        .collect();
    let started = Instant::now();
    let latencies: Vec<Result<Duration>> = futures::stream::iter(offsets)
        .map(|offset| {
            let target = target.clone();
            let path = path.to_string();
            async move {
                let t = Instant::now();
                let r = target
                    .req(Method::GET, &path)
                    .header(
                        header::RANGE,
                        format!("bytes={offset}-{}", offset + block - 1),
                    )
                    .send()
                    .await?;
                if r.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                    return Err(format!("status {}", r.status()).into());
                }
                let body = r.bytes().await?;
                if body.len() as u64 != block {
                    return Err("short body".into());
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let latencies = latencies.into_iter().collect::<Result<Vec<_>>>()?;
    let (p50, p99) = percentiles(latencies);
    Ok(json!({"req_per_s": requests as f64 / secs, "p50_ms": p50, "p99_ms": p99}))
}

async fn long_pollers(target: &Arc<Target>, pollers: usize) -> Result<Value> {
    let pkg = new_package(target, json!({})).await?;
    let page: Value = target
        .req(Method::GET, "/events?wait=0&limit=1000&since=0")
        .header(header::ACCEPT, "application/json")
        .send()
        .await?
        .json()
        .await?;
    let mut since = page["next_since"].as_u64().unwrap_or(0);
    // Skip to the end of the log.
    loop {
        let page: Value = target
            .req(
                Method::GET,
                &format!("/events?wait=0&limit=1000&since={since}"),
            )
            .header(header::ACCEPT, "application/json")
            .send()
            .await?
            .json()
            .await?;
        let next = page["next_since"].as_u64().unwrap_or(since);
        if next == since {
            break;
        }
        since = next;
    }
    let mut waiting = Vec::new();
    for _ in 0..pollers {
        let target = target.clone();
        waiting.push(tokio::spawn(async move {
            let r = target
                .req(Method::GET, &format!("/events?since={since}&wait=60"))
                .header(header::ACCEPT, "application/json")
                .send()
                .await?;
            let page: Value = r.json().await?;
            let got = Instant::now();
            if page["events"].as_array().is_none_or(|e| e.is_empty()) {
                return Err::<Instant, Box<dyn std::error::Error + Send + Sync>>("no event".into());
            }
            Ok(got)
        }));
    }
    // Let every poller reach the server and start waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let committed = Instant::now();
    target
        .req(Method::POST, &format!("/packages/{pkg}/finalize"))
        .send()
        .await?
        .error_for_status()?;
    let mut latencies = Vec::new();
    for w in waiting {
        latencies.push(w.await??.saturating_duration_since(committed));
    }
    let (p50, p99) = percentiles(latencies);
    Ok(json!({"pollers": pollers, "p50_ms": p50, "p99_ms": p99}))
}

async fn populate(target: &Arc<Target>, packages: usize, concurrency: usize) -> Result<Value> {
    let started = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(0..packages)
        .map(|i| {
            let target = target.clone();
            async move {
                let body = json!({"producer": format!("producer-{}", i % 100), "subject": format!("app@{i}"),
                                  "retention_class": "standard",
                                  "metadata": {"git.sha": format!("{:040x}", i), "team": format!("team-{}", i % 50)}});
                let p: Value = target.req(Method::POST, "/packages").json(&body).send().await?.error_for_status()?.json().await?;
                if i % 10 == 0 {
                    let form = reqwest::multipart::Form::new()
                        .text("path", "f")
                        .part("file", reqwest::multipart::Part::bytes(format!("content-{}", i / 10 % 1000).into_bytes()));
                    target.req(Method::POST, &format!("/packages/{}/files", p["id"].as_str().unwrap_or_default())).multipart(form).send().await?.error_for_status()?;
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(json!({"packages": packages, "secs": started.elapsed().as_secs_f64()}))
}

async fn queries(target: &Arc<Target>, requests: usize) -> Result<Value> {
    let mut out = serde_json::Map::new();
    let contains = Sha256Digest::of(b"content-7").content_address();
    for kind in ["producer", "metadata", "contains"] {
        let mut latencies = Vec::new();
        for i in 0..requests {
            let url = match kind {
                "producer" => format!("/packages?producer=producer-{}&limit=50", i % 100),
                "metadata" => format!("/packages?metadata.team=team-{}&limit=50", i % 50),
                _ => format!("/packages?contains={contains}&limit=50"),
            };
            let t = Instant::now();
            target
                .req(Method::GET, &url)
                .send()
                .await?
                .error_for_status()?
                .bytes()
                .await?;
            latencies.push(t.elapsed());
        }
        let (p50, p99) = percentiles(latencies);
        out.insert(kind.into(), json!({"p50_ms": p50, "p99_ms": p99}));
    }
    Ok(Value::Object(out))
}

/// Peak and current resident memory of a process, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn siege(
    target: &Arc<Target>,
    slow: usize,
    pollers: usize,
    requests: usize,
    pid: Option<u32>,
) -> Result<Value> {
    use tokio::io::AsyncWriteExt;
    let addr = target
        .base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let token = target.token.clone().unwrap_or_default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reconnects = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    let mut spawn = |head: String, linger: bool| {
        let (addr, stop, reconnects) = (addr.clone(), stop.clone(), reconnects.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if tcp.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                // Until the server answers or cuts the connection, then again.
                loop {
                    match tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => break,
                        Ok(Ok(_)) if !linger => break,
                        _ if stop.load(std::sync::atomic::Ordering::Relaxed) => return,
                        _ => {}
                    }
                }
                reconnects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }));
    };
    for _ in 0..slow {
        spawn("GET /packages HTTP/1.1\r\nHost: siege\r\n".into(), true);
    }
    for _ in 0..pollers {
        spawn(
            format!(
                "GET /events?since=18446744073709551614&wait=60 HTTP/1.1\r\nHost: siege\r\n\
                 Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
            ),
            false,
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut latencies = Vec::with_capacity(requests);
    let mut failed = 0;
    for _ in 0..requests {
        let started = Instant::now();
        match target.req(Method::GET, "/packages?limit=10").send().await {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                latencies.push(started.elapsed());
            }
            _ => failed += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let peak = pid.map(memory_mib);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }
    let (p50, p99) = percentiles(latencies);
    Ok(json!({
        "slow": slow, "pollers": pollers, "requests": requests, "failed": failed,
        "p50_ms": p50, "p99_ms": p99,
        "reconnects": reconnects.load(std::sync::atomic::Ordering::Relaxed),
        "peak_rss_mib": peak.map(|m| m.0), "rss_mib": peak.map(|m| m.1),
    }))
}
