//! `artifactstore pull <id> <dir>`: download every file of a finalized package concurrently,
//! verify each against the manifest, resume partial downloads with `Range`.
//!
//! A package is data from someone else, and the target directory may hold traps: the manifest
//! is trusted only once its bytes encode to the package's `manifest_digest` (or the one given
//! with `--digest`), no symbolic link under the target directory is ever followed (refused
//! instead), part files are opened without following links, and no file is written past the
//! size the manifest gives it.

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
    /// Package id, or REPO:TAG.
    pub id: String,
    /// Directory to write the files into (created if missing).
    pub dir: PathBuf,
    /// Files downloaded at once.
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    /// Attempts per file before giving up (each resumes where the last stopped).
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
    /// The manifest digest (sha256:…) the package must have; refuses anything else.
    #[arg(long)]
    pub digest: Option<String>,
}

pub async fn run(client: &Client, mut args: PullArgs, json_output: bool) -> CliResult<()> {
    let resolved = crate::tags::resolve(client, &args.id).await?;
    args.id = resolved.id;
    // Named by a tag: the package read must be the one tagged, even if the tag moves meanwhile.
    args.digest = args.digest.or(resolved.manifest_digest);
    let manifest = verified_manifest(client, &args).await?;
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

/// The manifest, once its bytes are shown to be the ones its digest names.
async fn verified_manifest(client: &Client, args: &PullArgs) -> CliResult<Manifest> {
    let package: Value = client
        .json(client.request(Method::GET, &format!("/packages/{}", args.id)))
        .await?;
    let digest = match (&args.digest, package["manifest_digest"].as_str()) {
        (Some(wanted), Some(got)) if wanted != got => {
            return Err(CliError::Integrity(format!(
                "package {} has manifest digest {got}, not the {wanted} asked for",
                args.id
            )));
        }
        (_, Some(got)) => got.to_string(),
        (_, None) => {
            return Err(CliError::Server {
                status: StatusCode::CONFLICT,
                kind: String::new(),
                title: "Conflict".into(),
                detail: format!(
                    "package {} is not finalized, so it has no manifest",
                    args.id
                ),
            });
        }
    };
    let response = client
        .send(client.request(Method::GET, &format!("/packages/{}/manifest.json", args.id)))
        .await?;
    let bytes = response.bytes().await.map_err(|e| client.network(e))?;
    let untrusted = || CliError::Integrity(format!("the manifest served does not match {digest}"));
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|_| untrusted())?;
    // Its JSON must be exactly the JCS projection of a value whose CBOR has that digest.
    let encoded = manifest.encode().map_err(|_| untrusted())?;
    if encoded.digest.content_address() != digest || encoded.json.as_bytes() != bytes {
        return Err(untrusted());
    }
    Ok(manifest)
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

/// Where a manifest path goes under `dir`, with its parent directories made; refuses
/// anything that could leave `dir`, and any symbolic link on the way.
async fn destination(dir: &Path, path: &str) -> CliResult<PathBuf> {
    validate::path(path).map_err(|m| CliError::Integrity(format!("manifest path {path:?} {m}")))?;
    let segments: Vec<&str> = path.split('/').collect();
    if cfg!(windows)
        && let Some(bad) = segments.iter().find(|s| !windows_safe(s))
    {
        return Err(CliError::Integrity(format!(
            "manifest path {path:?}: {bad:?} is not a name Windows can hold in a directory \
             (a drive, a device, a stream, or a name Windows would change)"
        )));
    }
    let mut at = dir.to_path_buf();
    for (i, segment) in segments.iter().enumerate() {
        at.push(segment);
        let last = i + 1 == segments.len();
        match tokio::fs::symlink_metadata(&at).await {
            Ok(meta) if meta.file_type().is_symlink() => return Err(refuse_link(&at)),
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(CliError::io(
                    &at.display().to_string(),
                    "exists and is not a directory",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !last => {
                match tokio::fs::create_dir(&at).await {
                    Ok(()) => {}
                    // Made by a concurrent download of a sibling: checked on the next look.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        if tokio::fs::symlink_metadata(&at)
                            .await
                            .is_ok_and(|m| m.file_type().is_symlink())
                        {
                            return Err(refuse_link(&at));
                        }
                    }
                    Err(e) => return Err(CliError::io(&at.display().to_string(), e)),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(CliError::io(&at.display().to_string(), e)),
        }
    }
    Ok(at)
}

/// Whether Windows keeps `segment` as a plain name inside a directory: no drive (`C:`) or
/// alternate data stream (`a:b`), none of its other reserved characters, no trailing dot or
/// space (which it strips), and no device name (`CON`, `NUL`, `COM1`, …, with any extension),
/// which it opens instead of a file. `PathBuf::push` of `C:x` would leave the target.
fn windows_safe(segment: &str) -> bool {
    const DEVICES: [&str; 4] = ["CON", "PRN", "AUX", "NUL"];
    let reserved = |c: char| "<>:\"\\|?*".contains(c) || c < ' ';
    let stem = segment
        .split('.')
        .next()
        .unwrap_or("")
        .trim_end()
        .to_ascii_uppercase();
    let device = DEVICES.contains(&stem.as_str())
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && stem.as_bytes()[3].is_ascii_digit()
            && stem.as_bytes()[3] != b'0')
        || stem.starts_with("COM\u{b9}")
        || stem.starts_with("LPT\u{b9}");
    !segment.chars().any(reserved) && !segment.ends_with(['.', ' ']) && !device
}

fn refuse_link(path: &Path) -> CliError {
    CliError::Io(format!(
        "{}: is a symbolic link; pull never writes through links in the target directory \
         (remove it, or pull into a fresh directory)",
        path.display()
    ))
}

/// Opens (creating) a part file for appending, never through a symbolic link.
async fn open_part(path: &Path) -> CliResult<tokio::fs::File> {
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    options.custom_flags(libc::O_NOFOLLOW);
    options.open(path).await.map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return refuse_link(path);
        }
        CliError::io(&path.display().to_string(), e)
    })
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
    let dest = destination(dir, &file.path).await?;
    let expected = file.digests.sha256;
    if tokio::fs::symlink_metadata(&dest)
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
    let mut out = open_part(&partial).await?;
    let mut have = out
        .metadata()
        .await
        .map_err(|e| CliError::io(&partial.display().to_string(), e))?
        .len();
    if have > file.size {
        have = 0;
    }
    let mut hasher = Sha256Hasher::new();
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
            if hasher.len() + chunk.len() as u64 > file.size {
                drop(out);
                let _ = tokio::fs::remove_file(&partial).await;
                return Err(CliError::Integrity(format!(
                    "{}: the server sent more than the manifest's {} bytes",
                    file.path, file.size
                )));
            }
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

#[cfg(test)]
mod windows_names {
    use super::windows_safe;

    #[test]
    fn drives_streams_devices_and_stripped_names_are_not_plain_names() {
        for bad in [
            "C:",
            "C:evil",
            "a:b",
            "CON",
            "con.txt",
            "Nul",
            "COM1",
            "lpt9.log",
            "AUX.tar.gz",
            "name.",
            "name ",
            "a<b",
            "a|b",
            "a?b",
            "a*b",
            "a\"b",
            "back\\slash",
        ] {
            assert!(!windows_safe(bad), "{bad:?}");
        }
        for good in [
            "app",
            "app.exe",
            "COM10",
            "LPT0",
            "console.log",
            "con-fig",
            ".hidden",
        ] {
            assert!(windows_safe(good), "{good:?}");
        }
    }
}
