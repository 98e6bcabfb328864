//! `artifactstore pull <id> <dir>`: download every file of a finalized package concurrently,
//! verify each against the manifest, resume partial downloads with `Range`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use artifactstore_core::manifest::{Manifest, ManifestFile};
use artifactstore_core::{Sha256Hasher, validate};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{CliError, CliResult, Client};
use crate::progress::Progress;

/// Suffix of a file being downloaded; it gets its final name only once verified.
const PARTIAL: &str = ".artifactstore-part";

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  artifactstore pull pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA ./out
  artifactstore pull pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA ./out --jobs 8")]
pub struct PullArgs {
    /// Package id.
    pub id: String,
    /// Directory to write the files into (created if missing).
    pub dir: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Attempts per file before giving up (each resumes where the last stopped).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

pub async fn run(client: &Client, args: PullArgs, json_output: bool) -> CliResult<()> {
    let manifest: Manifest = client
        .json(client.request(Method::GET, &format!("/packages/{}/manifest.json", args.id)))
        .await?;
    let ids = file_ids(client, &args.id).await?;
    tokio::fs::create_dir_all(&args.dir)
        .await
        .map_err(|e| CliError::io(&args.dir.display().to_string(), e))?;
    let progress = Arc::new(Progress::new(
        "pulled",
        manifest.total_size,
        manifest.file_count,
        json_output,
    ));
    let jobs = args.jobs.max(1);
    let results: Vec<CliResult<()>> = futures::stream::iter(manifest.files.iter().cloned())
        .map(|file| {
            let (client, progress, dir) = (client.clone(), progress.clone(), args.dir.clone());
            let id = ids
                .iter()
                .find(|(p, _)| *p == file.path)
                .map(|(_, id)| id.clone());
            let retries = args.retries;
            async move {
                let id = id.ok_or_else(|| {
                    CliError::Integrity(format!(
                        "{} is in the manifest but not in the package",
                        file.path
                    ))
                })?;
                let mut attempt = 0;
                loop {
                    match fetch(&client, &id, &file, &dir, &progress).await {
                        Ok(note) => {
                            progress.file_done(&file.path, file.size, note);
                            return Ok(());
                        }
                        Err(e @ CliError::Network { .. }) if attempt + 1 < retries => {
                            progress.note(&format!("{}: {e}; resuming", file.path));
                            attempt += 1;
                            tokio::time::sleep(std::time::Duration::from_millis(
                                300 << attempt.min(4),
                            ))
                            .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        })
        .buffer_unordered(jobs)
        .collect()
        .await;
    progress.finish();
    results.into_iter().collect::<CliResult<Vec<()>>>()?;
    if json_output {
        println!(
            "{}",
            json!({"package_id": args.id, "file_count": manifest.file_count, "total_size": manifest.total_size, "dir": args.dir})
        );
    } else {
        println!(
            "pulled {} files ({} bytes) into {}",
            manifest.file_count,
            manifest.total_size,
            args.dir.display()
        );
    }
    Ok(())
}

async fn file_ids(client: &Client, package: &str) -> CliResult<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .request(Method::GET, &format!("/packages/{package}/files"))
            .query(&[("limit", "1000")]);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page: Value = client.json(request).await?;
        for f in page["items"].as_array().into_iter().flatten() {
            if let (Some(path), Some(id)) = (f["path"].as_str(), f["id"].as_str()) {
                out.push((path.to_string(), id.to_string()));
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

/// Where a manifest path goes under `dir`; refuses anything that could leave it.
fn destination(dir: &Path, path: &str) -> CliResult<PathBuf> {
    validate::path(path).map_err(|m| CliError::Integrity(format!("manifest path {path:?} {m}")))?;
    Ok(path
        .split('/')
        .fold(dir.to_path_buf(), |acc, segment| acc.join(segment)))
}

async fn hash_prefix(path: &Path, hasher: &mut Sha256Hasher) -> CliResult<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(&path.display().to_string(), e))?;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| CliError::io(&path.display().to_string(), e))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

/// Downloads one file (resuming a partial one), verifies it, gives it its name.
async fn fetch(
    client: &Client,
    id: &str,
    file: &ManifestFile,
    dir: &Path,
    progress: &Progress,
) -> CliResult<&'static str> {
    let dest = destination(dir, &file.path)?;
    let expected = file.digests.sha256;
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| CliError::io(&parent.display().to_string(), e))?;
    }
    if tokio::fs::metadata(&dest)
        .await
        .is_ok_and(|m| m.len() == file.size)
    {
        let mut hasher = Sha256Hasher::new();
        hash_prefix(&dest, &mut hasher).await?;
        if hasher.finish() == expected {
            progress.bytes(file.size);
            return Ok(" already present");
        }
    }
    let partial = PathBuf::from(format!("{}{PARTIAL}", dest.display()));
    let mut have = tokio::fs::metadata(&partial)
        .await
        .map(|m| m.len())
        .unwrap_or(0);
    if have > file.size {
        have = 0;
    }
    let mut hasher = Sha256Hasher::new();
    let mut out = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await
        .map_err(|e| CliError::io(&partial.display().to_string(), e))?;
    if have == 0 {
        out.set_len(0)
            .await
            .map_err(|e| CliError::io("truncate", e))?;
    } else {
        hash_prefix(&partial, &mut hasher).await?;
        progress.bytes(have);
    }
    if have < file.size {
        let mut request = client.request(Method::GET, &format!("/files/{id}/download"));
        if have > 0 {
            request = request.header("range", format!("bytes={have}-"));
        }
        let response = client.send(request).await?;
        if have > 0 && response.status() != StatusCode::PARTIAL_CONTENT {
            // The server sent the whole file after all: start over.
            out.set_len(0)
                .await
                .map_err(|e| CliError::io("truncate", e))?;
            hasher = Sha256Hasher::new();
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| client.network(e))?;
            hasher.update(&chunk);
            out.write_all(&chunk)
                .await
                .map_err(|e| CliError::io(&partial.display().to_string(), e))?;
            progress.bytes(chunk.len() as u64);
        }
    }
    out.sync_all()
        .await
        .map_err(|e| CliError::io(&partial.display().to_string(), e))?;
    drop(out);
    let size = hasher.len();
    let actual = hasher.finish();
    if size != file.size || actual != expected {
        // Corrupt bytes never get the final name, and are not resumed from.
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(CliError::Integrity(format!(
            "{}: got {size} bytes with sha256 {actual}, the manifest says {} bytes with sha256 {expected}",
            file.path, file.size
        )));
    }
    tokio::fs::rename(&partial, &dest)
        .await
        .map_err(|e| CliError::io(&dest.display().to_string(), e))?;
    Ok("")
}
