//! `opsloop kb import DIR --tenant T|global`: every Markdown or text file
//! of a folder, through the API (`POST /kb/docs`), so that the same rules
//! apply as to any client: the token's roles and tenants, the same checks.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::json;

use super::store::Ingested;
use crate::problem::FieldError;

/// A refusal as the API words it (problem+json).
#[derive(Debug, Default, serde::Deserialize)]
struct Refusal {
    #[serde(default)]
    detail: String,
    #[serde(default)]
    errors: Vec<FieldError>,
}

/// The title of a file: its first first-level heading, else its name.
fn title_of(body: &str, path: &Path) -> String {
    body.lines()
        .find_map(|l| l.strip_prefix("# ").map(|t| t.trim().to_string()))
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().replace(['-', '_'], " "))
                .unwrap_or_default()
        })
}

/// Imports the folder's `*.md`, `*.markdown` and `*.txt` files (not its
/// subfolders, not its README), in name order; prints one line per file. Fails when any
/// file was refused, after trying them all.
pub async fn import(url: &str, token: &str, dir: &Path, tenant: &str) -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        // A folder's README is its index, not a runbook.
        .filter(|p| {
            !p.file_stem()
                .is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case("readme"))
        })
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| matches!(e, "md" | "markdown" | "txt"))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("{} holds no .md or .txt file", dir.display());
    }
    // A stable name for each file wherever the folder sits: the folder's
    // own name and the file's.
    let folder = dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "import".into());
    let http = crate::http_client::http_client().build()?;
    let (mut stored, mut unchanged, mut refused) = (0, 0, 0);
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let body = match std::fs::read_to_string(path) {
            Ok(b) => b,
            Err(e) => {
                println!("refused   {name}: not readable as UTF-8 text ({e})");
                refused += 1;
                continue;
            }
        };
        let doc = json!({"tenant": tenant, "title": title_of(&body, path),
                         "source": format!("{folder}/{name}"), "body": body});
        let response = http
            .post(format!("{}/kb/docs", url.trim_end_matches('/')))
            .bearer_auth(token)
            .json(&doc)
            .send()
            .await
            .with_context(|| format!("sending {name}"))?;
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        match (status, serde_json::from_str::<Ingested>(&text)) {
            (201, Ok(doc)) => {
                stored += 1;
                println!("stored    {name}: {} chunk(s), id {}", doc.chunks, doc.id);
            }
            (200, Ok(_)) => {
                unchanged += 1;
                println!("unchanged {name}");
            }
            _ => {
                refused += 1;
                let why: Refusal = serde_json::from_str(&text).unwrap_or_default();
                let fields: Vec<String> = why
                    .errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect();
                println!(
                    "refused   {name}: HTTP {status} {} {}",
                    why.detail,
                    fields.join("; ")
                );
            }
        }
    }
    println!(
        "kb import: {stored} stored, {unchanged} unchanged, {refused} refused ({} files)",
        files.len()
    );
    if refused > 0 {
        bail!("{refused} file(s) were refused");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_title_is_the_first_heading_else_the_file_name() {
        let p = Path::new("runbooks/disk-full.md");
        assert_eq!(
            title_of("intro\n# Disk full or filling up\n## Diagnose", p),
            "Disk full or filling up"
        );
        assert_eq!(title_of("## Only a section\ntext", p), "disk full");
    }
}
