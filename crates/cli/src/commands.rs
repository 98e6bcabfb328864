//! The small commands: `ls`, `show`, `manifest`, `events`.

use std::io::Write;
use std::path::PathBuf;

use artifactstore_core::manifest::Manifest;
use artifactstore_core::{Package, Page};
use reqwest::Method;
use serde_json::Value;

use crate::client::{CliError, CliResult, Client};
use crate::tags::{package_segment, resolve};

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  artifactstore ls --producer ci/build-42 --state finalized
  artifactstore ls --meta git.sha=abc123 --all --json
  artifactstore ls --contains sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03")]
pub struct LsArgs {
    #[arg(long)]
    pub producer: Option<String>,
    #[arg(long)]
    pub subject: Option<String>,
    #[arg(long)]
    pub retention_class: Option<String>,
    /// open or finalized.
    #[arg(long)]
    pub state: Option<String>,
    /// Metadata KEY=VALUE that must match exactly (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    pub meta: Vec<String>,
    /// Metadata key that must be present (repeatable).
    #[arg(long = "has-meta", value_name = "KEY")]
    pub has_meta: Vec<String>,
    /// Packages holding a file with this content address (sha256:…).
    #[arg(long)]
    pub contains: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub created_after: Option<String>,
    /// RFC 3339, exclusive.
    #[arg(long)]
    pub created_before: Option<String>,
    /// Page size.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Start after this cursor (printed by a previous page).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Follow the cursors to the last page.
    #[arg(long)]
    pub all: bool,
}

pub async fn ls(client: &Client, args: LsArgs, json_output: bool) -> CliResult<()> {
    let mut query: Vec<(String, String)> = Vec::new();
    let options = [
        ("producer", &args.producer),
        ("subject", &args.subject),
        ("retention_class", &args.retention_class),
        ("state", &args.state),
        ("contains", &args.contains),
        ("created_after", &args.created_after),
        ("created_before", &args.created_before),
    ];
    for (key, value) in options {
        if let Some(value) = value {
            query.push((key.into(), value.clone()));
        }
    }
    for item in &args.meta {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| CliError::Usage(format!("--meta {item:?}: expected KEY=VALUE")))?;
        query.push((format!("metadata.{k}"), v.into()));
    }
    for key in &args.has_meta {
        query.push(("has_metadata".into(), key.clone()));
    }
    query.push(("limit".into(), args.limit.to_string()));
    let mut cursor = args.cursor.clone();
    let mut header = !json_output;
    loop {
        let mut request = client.request(Method::GET, "/packages").query(&query);
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page: Page<Package> = client.json(request).await?;
        let mut out = std::io::stdout().lock();
        if std::mem::take(&mut header) {
            let columns = ["ID", "STATE", "FILES", "BYTES", "CREATED", "PRODUCER"];
            writeln!(
                out,
                "{:<30}  {:<9}  {:>6}  {:>14}  {:<24}  {:<20}  SUBJECT",
                columns[0], columns[1], columns[2], columns[3], columns[4], columns[5]
            )
            .map_err(|e| CliError::io("stdout", e))?;
        }
        for p in &page.items {
            let line = if json_output {
                serde_json::to_string(p).unwrap_or_default()
            } else {
                format!(
                    "{:<30}  {:<9}  {:>6}  {:>14}  {:<24}  {:<20}  {}",
                    p.id.to_string(),
                    p.state.as_str(),
                    p.file_count,
                    p.total_size,
                    p.created_at.to_string(),
                    p.producer,
                    p.subject
                )
            };
            writeln!(out, "{line}").map_err(|e| CliError::io("stdout", e))?;
        }
        match page.next_cursor {
            Some(next) if args.all => cursor = Some(next),
            Some(next) => {
                eprintln!("more: --cursor {next}");
                return Ok(());
            }
            None => return Ok(()),
        }
    }
}

pub async fn show(client: &Client, id: &str) -> CliResult<()> {
    let id = resolve(client, id).await?.id;
    let package: Value = client
        .json(client.request(Method::GET, &format!("/packages/{id}")))
        .await?;
    println!(
        "{}",
        serde_json::to_string_pretty(&package).unwrap_or_default()
    );
    Ok(())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ManifestFormat {
    /// The deterministic CBOR bytes, exactly as served.
    Cbor,
    /// The JCS (RFC 8785) JSON projection, exactly as served.
    Json,
    /// A table: path, size, media type, digest.
    Pretty,
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  artifactstore manifest pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA
  artifactstore manifest pkg_01JZ3NDEKTSV4RRFFQ69G5FAVA --format cbor -o manifest.cbor")]
pub struct ManifestArgs {
    /// Package id, or REPO:TAG.
    pub id: String,
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: ManifestFormat,
    /// Write to this file instead of standard output.
    #[arg(short = 'o', long = "output")]
    pub output: Option<PathBuf>,
}

pub async fn manifest(client: &Client, mut args: ManifestArgs) -> CliResult<()> {
    args.id = resolve(client, &args.id).await?.id;
    let bytes: Vec<u8> = match args.format {
        ManifestFormat::Cbor => {
            let request = client
                .request(Method::GET, &format!("/packages/{}/manifest", args.id))
                .header("accept", "application/cbor");
            client
                .send(request)
                .await?
                .bytes()
                .await
                .map_err(|e| client.network(e))?
                .to_vec()
        }
        ManifestFormat::Json | ManifestFormat::Pretty => {
            let request =
                client.request(Method::GET, &format!("/packages/{}/manifest.json", args.id));
            let text = client
                .send(request)
                .await?
                .bytes()
                .await
                .map_err(|e| client.network(e))?
                .to_vec();
            if args.format == ManifestFormat::Json {
                text
            } else {
                let m: Manifest = serde_json::from_slice(&text)
                    .map_err(|e| CliError::Integrity(format!("manifest: {e}")))?;
                pretty(&m).into_bytes()
            }
        }
    };
    match args.output {
        Some(path) => {
            std::fs::write(&path, bytes).map_err(|e| CliError::io(&path.display().to_string(), e))
        }
        None => std::io::stdout()
            .lock()
            .write_all(&bytes)
            .map_err(|e| CliError::io("stdout", e)),
    }
}

fn pretty(m: &Manifest) -> String {
    let mut out = format!(
        "package   {}\nsubject   {}\nproducer  {}\nfinalized {}\nfiles     {} ({} bytes)\n\n",
        m.package_id, m.subject, m.producer, m.finalized_at, m.file_count, m.total_size
    );
    let width = m
        .files
        .iter()
        .map(|f| f.path.chars().count())
        .max()
        .unwrap_or(4)
        .max(4);
    out.push_str(&format!(
        "{:<width$}  {:>12}  {:<28}  DIGEST\n",
        "PATH", "SIZE", "MEDIA TYPE"
    ));
    for f in &m.files {
        out.push_str(&format!(
            "{:<width$}  {:>12}  {:<28}  {}\n",
            f.path, f.size, f.media_type, f.content_address
        ));
    }
    out
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  artifactstore events --since 0
  artifactstore events --follow | jq -c 'select(.type == \"package.finalized\")'")]
pub struct EventsArgs {
    /// Print events with a sequence above this.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    /// Keep waiting for new events (long-poll) until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Events per request.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
}

pub async fn events(client: &Client, args: EventsArgs) -> CliResult<()> {
    let mut since = args.since;
    loop {
        let wait = if args.follow { "30" } else { "0" };
        let request = client
            .request(Method::GET, "/events")
            .header("accept", "application/json")
            .query(&[
                ("since", since.to_string()),
                ("limit", args.limit.to_string()),
                ("wait", wait.into()),
            ]);
        let page: Value = match client.json(request).await {
            Ok(page) => page,
            // Too many long-polls wait at the server: it asks for a second's patience.
            Err(CliError::Server { status, .. })
                if args.follow && status == reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        let events = page["events"].as_array().cloned().unwrap_or_default();
        let mut out = std::io::stdout().lock();
        for event in &events {
            writeln!(out, "{event}").map_err(|e| CliError::io("stdout", e))?;
        }
        out.flush().map_err(|e| CliError::io("stdout", e))?;
        since = page["next_since"].as_u64().unwrap_or(since);
        if events.is_empty() && !args.follow {
            return Ok(());
        }
    }
}

/// `rm`: deletes packages, one request each, stopping at the first failure (its exit code).
pub async fn rm(client: &Client, ids: &[String], json_output: bool) -> CliResult<()> {
    let mut deleted = Vec::new();
    for id in ids {
        let path = format!("/packages/{}", package_segment(id)?);
        client.send(client.request(Method::DELETE, &path)).await?;
        if !json_output {
            println!("deleted {id}");
        }
        deleted.push(id.clone());
    }
    if json_output {
        println!("{}", serde_json::json!({ "deleted": deleted }));
    }
    Ok(())
}

/// `hold` / `release`: sets a package's hold and prints the package.
pub async fn hold(client: &Client, id: &str, held: bool, json_output: bool) -> CliResult<()> {
    let method = if held { Method::PUT } else { Method::DELETE };
    let path = format!("/packages/{}/hold", package_segment(id)?);
    let package: Value = client.json(client.request(method, &path)).await?;
    if json_output {
        println!("{package}");
    } else {
        println!("{} {id}", if held { "held" } else { "released" });
    }
    Ok(())
}

/// `usage`: the tenant's bytes, packages and open uploads against its quotas.
pub async fn usage(client: &Client, json_output: bool) -> CliResult<()> {
    let usage: Value = client.json(client.request(Method::GET, "/usage")).await?;
    if json_output {
        println!("{usage}");
        return Ok(());
    }
    let limit = |name: &str| match usage["limits"][name].as_u64() {
        Some(n) => format!(" of {n}"),
        None => String::new(),
    };
    println!("tenant        {}", usage["tenant"].as_str().unwrap_or(""));
    println!("bytes         {}{}", usage["bytes"], limit("max_bytes"));
    println!("packages      {}", usage["packages"]);
    println!(
        "open uploads  {}{}",
        usage["open_uploads"],
        limit("max_open_uploads")
    );
    Ok(())
}
