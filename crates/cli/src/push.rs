//! `artifactstore push <dir>`: create a package, upload a directory tree into it concurrently
//! (small files by multipart, large ones through resumable upload sessions), finalize.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use artifactstore_core::{Package, Sha256Digest, Sha256Hasher};
use futures::{StreamExt, TryStreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::client::{CliError, CliResult, Client};
use crate::progress::Progress;

const READ_BLOCK: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Symlinks {
    /// Refuse to push a tree that has symbolic links.
    Error,
    /// Upload what a link points to.
    Follow,
    /// Leave links out (each is reported).
    Skip,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  artifactstore push ./dist --producer ci/build-42 --subject app@1.2.3
  artifactstore push ./model --producer train --subject resnet@7 --meta git.sha=abc123 --jobs 8 --json")]
pub struct PushArgs {
    /// The directory to upload; paths inside the package are relative to it.
    pub dir: PathBuf,
    #[arg(long)]
    pub producer: String,
    #[arg(long)]
    pub subject: String,
    #[arg(long, default_value = "standard")]
    pub retention_class: String,
    /// Metadata entry KEY=VALUE (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Leave the package open instead of finalizing it.
    #[arg(long)]
    pub no_finalize: bool,
    /// Files uploaded at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Files of at least this many bytes go through resumable upload sessions.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub chunk_threshold: u64,
    /// Chunk size of upload sessions, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub chunk_size: u64,
    /// What to do with symbolic links.
    #[arg(long, value_enum, default_value = "error")]
    pub symlinks: Symlinks,
    /// Attempts per request before giving up (with backoff, resuming at the server's offset).
    #[arg(long, default_value_t = 10)]
    pub retries: u32,
}

struct Entry {
    path: String,
    file: PathBuf,
    size: u64,
}

pub async fn run(client: &Client, args: PushArgs, json_output: bool) -> CliResult<()> {
    if args.chunk_size == 0 || args.jobs == 0 {
        return Err(CliError::Usage(
            "--chunk-size and --jobs must be positive".into(),
        ));
    }
    let mut metadata = serde_json::Map::new();
    for item in &args.meta {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--meta {item:?}: expected KEY=VALUE")))?;
        metadata.insert(k.to_string(), Value::from(v));
    }
    let (entries, skipped) = walk(&args.dir, args.symlinks)?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let progress = Arc::new(Progress::new(
        "pushed",
        total,
        entries.len() as u64,
        json_output,
    ));
    for path in skipped {
        progress.note(&format!("skipped symbolic link {path}"));
    }
    let body = json!({"producer": args.producer, "subject": args.subject,
                      "retention_class": args.retention_class, "metadata": metadata});
    let package: Package = client
        .json(client.request(Method::POST, "/packages").json(&body))
        .await?;
    let id = package.id.to_string();

    let args = Arc::new(args);
    let results: Vec<CliResult<()>> = futures::stream::iter(entries)
        .map(|entry| {
            let (client, args, progress, id) =
                (client.clone(), args.clone(), progress.clone(), id.clone());
            async move {
                let uploaded = if entry.size >= args.chunk_threshold {
                    upload_session(&client, &args, &id, &entry, &progress).await
                } else {
                    upload_small(&client, &args, &id, &entry, &progress).await
                };
                uploaded.map(|()| progress.file_done(&entry.path, entry.size, ""))
            }
        })
        .buffer_unordered(args.jobs)
        .collect()
        .await;
    progress.finish();
    results.into_iter().collect::<CliResult<Vec<()>>>()?;

    let package: Package = if args.no_finalize {
        client
            .json(client.request(Method::GET, &format!("/packages/{id}")))
            .await?
    } else {
        client
            .json(client.request(Method::POST, &format!("/packages/{id}/finalize")))
            .await?
    };
    let digest = package.manifest_digest.map(|d| d.to_string());
    if json_output {
        let out = json!({"package_id": id, "state": package.state, "manifest_digest": digest,
                         "file_count": package.file_count, "total_size": package.total_size});
        println!("{out}");
    } else {
        println!("package {id}");
        println!(
            "manifest {}",
            digest.as_deref().unwrap_or("(not finalized)")
        );
    }
    Ok(())
}

/// Every regular file under `root` with its package path, sorted; and the links skipped.
fn walk(root: &Path, symlinks: Symlinks) -> CliResult<(Vec<Entry>, Vec<String>)> {
    let meta =
        std::fs::metadata(root).map_err(|e| CliError::Usage(format!("{}: {e}", root.display())))?;
    if !meta.is_dir() {
        return Err(CliError::Usage(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let (mut entries, mut skipped) = (Vec::new(), Vec::new());
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let read =
            std::fs::read_dir(&dir).map_err(|e| CliError::io(&dir.display().to_string(), e))?;
        for item in read {
            let item = item.map_err(|e| CliError::io(&dir.display().to_string(), e))?;
            let name = item.file_name().into_string().map_err(|n| {
                CliError::Usage(format!("{}: file name {n:?} is not UTF-8", dir.display()))
            })?;
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let full = item.path();
            let mut kind = item.file_type().map_err(|e| CliError::io(&path, e))?;
            if kind.is_symlink() {
                match symlinks {
                    Symlinks::Error => {
                        return Err(CliError::Usage(format!(
                            "{path} is a symbolic link: choose --symlinks follow or --symlinks skip"
                        )));
                    }
                    Symlinks::Skip => {
                        skipped.push(path);
                        continue;
                    }
                    Symlinks::Follow => {
                        kind = std::fs::metadata(&full)
                            .map_err(|e| CliError::io(&path, e))?
                            .file_type();
                    }
                }
            }
            if kind.is_dir() {
                stack.push((full, path));
            } else if kind.is_file() {
                let size = std::fs::metadata(&full)
                    .map_err(|e| CliError::io(&path, e))?
                    .len();
                entries.push(Entry {
                    path,
                    file: full,
                    size,
                });
            } else {
                return Err(CliError::Usage(format!(
                    "{path} is not a regular file (device, socket or pipe)"
                )));
            }
        }
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((entries, skipped))
}

async fn backoff(attempt: u32) {
    let ms = (200u64 << attempt.min(5)).min(5000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Whether an error may go away by trying again: the network, or the server's own failure.
fn transient(e: &CliError) -> bool {
    match e {
        CliError::Network { .. } => true,
        CliError::Server { status, .. } => status.is_server_error(),
        _ => false,
    }
}

async fn hash_file(path: &Path) -> CliResult<Sha256Digest> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(&path.display().to_string(), e))?;
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; READ_BLOCK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| CliError::io(&path.display().to_string(), e))?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buf[..n]);
    }
}

/// A stream of `len` bytes of `path` from `offset`, feeding `hasher` as it goes.
async fn file_body(
    path: &Path,
    offset: u64,
    len: u64,
    hasher: Option<Arc<Mutex<Sha256Hasher>>>,
    progress: Arc<Progress>,
) -> CliResult<reqwest::Body> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(&path.display().to_string(), e))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| CliError::io("seek", e))?;
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_BLOCK)
        .inspect_ok(move |chunk| {
            if let Some(hasher) = &hasher
                && let Ok(mut h) = hasher.lock()
            {
                h.update(chunk);
            }
            progress.bytes(chunk.len() as u64);
        });
    Ok(reqwest::Body::wrap_stream(stream))
}

async fn upload_small(
    client: &Client,
    args: &PushArgs,
    pkg: &str,
    entry: &Entry,
    progress: &Arc<Progress>,
) -> CliResult<()> {
    let digest = hash_file(&entry.file).await?;
    let mut attempt = 0;
    loop {
        let body = file_body(&entry.file, 0, entry.size, None, progress.clone()).await?;
        let form = reqwest::multipart::Form::new()
            .text("path", entry.path.clone())
            .text("sha256", digest.hex())
            .part(
                "file",
                reqwest::multipart::Part::stream_with_length(body, entry.size),
            );
        let request = client
            .request(Method::POST, &format!("/packages/{pkg}/files"))
            .multipart(form);
        match client.send(request).await {
            Ok(_) => return Ok(()),
            // A retry after a lost answer finds the file already there: fine if it is ours.
            Err(CliError::Server {
                status: StatusCode::CONFLICT,
                ..
            }) if attempt > 0 => {
                return if find_file(client, pkg, &entry.path)
                    .await?
                    .is_some_and(|d| d == digest.hex())
                {
                    Ok(())
                } else {
                    Err(CliError::Usage(format!(
                        "{}: the package already has another file there",
                        entry.path
                    )))
                };
            }
            Err(e) if transient(&e) && attempt + 1 < args.retries => {
                progress.note(&format!("retrying {} after: {e}", entry.path));
                attempt += 1;
                backoff(attempt).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The sha256 of the file at `path` in the package, if there is one.
async fn find_file(client: &Client, pkg: &str, path: &str) -> CliResult<Option<String>> {
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .request(Method::GET, &format!("/packages/{pkg}/files"))
            .query(&[("limit", "1000")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page: Value = client.json(request).await?;
        for f in page["items"].as_array().into_iter().flatten() {
            if f["path"] == path {
                return Ok(f["digests"]["sha256"].as_str().map(str::to_string));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(None),
        }
    }
}

/// Uploads a large file in chunks through an upload session. After any failure it asks the
/// server where the upload stands and goes on from there.
async fn upload_session(
    client: &Client,
    args: &PushArgs,
    pkg: &str,
    entry: &Entry,
    progress: &Arc<Progress>,
) -> CliResult<()> {
    let created: Value = retry(args, progress, &entry.path, || {
        client.json(
            client
                .request(Method::POST, "/uploads")
                .json(&json!({"size": entry.size})),
        )
    })
    .await?;
    let url = format!("/uploads/{}", created["id"].as_str().unwrap_or_default());
    let mut hasher = Sha256Hasher::new();
    let mut attempt = 0;
    while hasher.len() < entry.size {
        let offset = hasher.len();
        let len = args.chunk_size.min(entry.size - offset);
        let pending = Arc::new(Mutex::new(hasher.clone()));
        let body = file_body(
            &entry.file,
            offset,
            len,
            Some(pending.clone()),
            progress.clone(),
        )
        .await?;
        let range = format!("bytes {offset}-{}/{}", offset + len - 1, entry.size);
        let sent = client
            .send(
                client
                    .request(Method::PATCH, &url)
                    .header("content-range", range)
                    .header("content-length", len)
                    .body(body),
            )
            .await;
        let server_offset = match sent {
            Ok(_) => {
                attempt = 0;
                offset + len
            }
            Err(e)
                if (transient(&e)
                    || matches!(&e, CliError::Server { status, .. } if status.as_u16() == 416))
                    && attempt + 1 < args.retries =>
            {
                progress.note(&format!("{}: {e}; resuming", entry.path));
                attempt += 1;
                backoff(attempt).await;
                let status: Value = retry(args, progress, &entry.path, || {
                    client.json(client.request(Method::GET, &url))
                })
                .await?;
                status["offset"].as_u64().unwrap_or(offset)
            }
            Err(e) => return Err(e),
        };
        let pending = pending.lock().map(|h| h.clone()).unwrap_or_default();
        if pending.len() == server_offset {
            hasher = pending;
        } else if server_offset != offset {
            // The server holds bytes this attempt did not hash: hash them from the file.
            hasher = rehash(&entry.file, hasher, server_offset).await?;
        }
    }
    let body = json!({"package_id": pkg, "path": entry.path, "sha256": hasher.finish().hex()});
    let mut attempt = 0;
    loop {
        match client
            .send(
                client
                    .request(Method::POST, &format!("{url}/complete"))
                    .json(&body),
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if transient(&e) && attempt + 1 < args.retries => {
                progress.note(&format!("{}: {e}; retrying", entry.path));
                attempt += 1;
                backoff(attempt).await;
                // The answer may have been lost after the server completed it.
                let status: CliResult<Value> = client.json(client.request(Method::GET, &url)).await;
                if status.is_ok_and(|s| s["state"] == "completed") {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn rehash(path: &Path, mut hasher: Sha256Hasher, to: u64) -> CliResult<Sha256Hasher> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(&path.display().to_string(), e))?;
    file.seek(std::io::SeekFrom::Start(hasher.len()))
        .await
        .map_err(|e| CliError::io("seek", e))?;
    let mut reader = file.take(to.saturating_sub(hasher.len()));
    let mut buf = vec![0u8; READ_BLOCK];
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| CliError::io("read", e))?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(&buf[..n]);
    }
}

/// Runs `op` until it succeeds, fails for good, or the attempts run out.
async fn retry<T, F, Fut>(args: &PushArgs, progress: &Progress, what: &str, op: F) -> CliResult<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = CliResult<T>>,
{
    let mut attempt = 0;
    loop {
        match op().await {
            Err(e) if transient(&e) && attempt + 1 < args.retries => {
                progress.note(&format!("{what}: {e}; retrying"));
                attempt += 1;
                backoff(attempt).await;
            }
            other => return other,
        }
    }
}
