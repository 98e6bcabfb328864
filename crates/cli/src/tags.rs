//! `tag`, `untag`, `tags`, and `REPO:TAG` references wherever a command takes a package id.

use artifactstore_core::validate;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::{CliError, CliResult, Client};

/// A package named as typed: a package id, or `REPO:TAG` (the last `:` splits them).
pub struct Resolved {
    pub id: String,
    /// The tag's manifest digest when named by a tag: what was tagged is what is read.
    pub manifest_digest: Option<String>,
}

/// `REPO:TAG` split and checked as the server checks it, so that no text typed can become a
/// request for another path.
fn reference(text: &str) -> CliResult<(&str, &str)> {
    let usage = |why: String| CliError::Usage(format!("{text:?} is not REPO:TAG: {why}"));
    let (repository, tag) = text
        .rsplit_once(':')
        .ok_or_else(|| usage("no ':'".into()))?;
    validate::repository(repository).map_err(|e| usage(format!("the repository {e}")))?;
    validate::tag(tag).map_err(|e| usage(format!("the tag {e}")))?;
    Ok((repository, tag))
}

/// A package id, or the package a tag names now.
pub async fn resolve(client: &Client, text: &str) -> CliResult<Resolved> {
    if !text.contains(':') {
        return Ok(Resolved {
            id: package_segment(text)?.to_string(),
            manifest_digest: None,
        });
    }
    let (repository, tag) = reference(text)?;
    let found: Value = client
        .json(client.request(Method::GET, &format!("/tags/{repository}/{tag}")))
        .await?;
    let id = found["package_id"].as_str().unwrap_or_default();
    Ok(Resolved {
        id: package_segment(id)?.to_string(),
        manifest_digest: found["manifest_digest"].as_str().map(str::to_string),
    })
}

/// A package id as typed, refused unless it is one path segment of id characters (so that
/// `rm 'x/hold'` cannot become another request).
pub fn package_segment(id: &str) -> CliResult<&str> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(CliError::Usage(format!(
            "{id:?} is not a package id (pkg_…) or REPO:TAG"
        )))
    }
}

/// `tag PKG REPO:TAG`: creates or moves the tag.
pub async fn tag(client: &Client, package: &str, text: &str, json_output: bool) -> CliResult<()> {
    let package = resolve(client, package).await?.id;
    let (repository, tag) = reference(text)?;
    let request = client
        .request(Method::PUT, &format!("/tags/{repository}/{tag}"))
        .json(&json!({ "package_id": package }));
    let set: Value = client.json(request).await?;
    if json_output {
        println!("{set}");
    } else {
        println!("{repository}:{tag} -> {package}");
    }
    Ok(())
}

/// `untag REPO:TAG`: deletes the tag; the package stays.
pub async fn untag(client: &Client, text: &str, json_output: bool) -> CliResult<()> {
    let (repository, tag) = reference(text)?;
    let path = format!("/tags/{repository}/{tag}");
    client.send(client.request(Method::DELETE, &path)).await?;
    if json_output {
        println!("{}", json!({ "deleted": text }));
    } else {
        println!("untagged {text}");
    }
    Ok(())
}

/// `tags [REPO]`: every tag of the tenant (or of one repository), page after page.
pub async fn list(client: &Client, repository: Option<&str>, json_output: bool) -> CliResult<()> {
    if let Some(repository) = repository {
        validate::repository(repository)
            .map_err(|e| CliError::Usage(format!("the repository {e}")))?;
    }
    let mut cursor: Option<String> = None;
    loop {
        let mut request = client
            .request(Method::GET, "/tags")
            .query(&[("limit", "1000")]);
        if let Some(repository) = repository {
            request = request.query(&[("repository", repository)]);
        }
        if let Some(c) = &cursor {
            request = request.query(&[("cursor", c)]);
        }
        let page: Value = client.json(request).await?;
        for t in page["items"].as_array().into_iter().flatten() {
            if json_output {
                println!("{t}");
            } else {
                let field = |name: &str| t[name].as_str().unwrap_or_default().to_string();
                println!(
                    "{}:{}  {}  {}  {}",
                    field("repository"),
                    field("tag"),
                    field("package_id"),
                    field("manifest_digest"),
                    field("updated_at")
                );
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(()),
        }
    }
}
