//! `opsloop kb import DIR --tenant T|global`: every Markdown or text file
//! of a folder, through the API (`POST /kb/docs`), so that the same rules
//! apply as to any client: the token's roles and tenants, the same checks.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

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
        let reply: Value = response.json().await.unwrap_or(Value::Null);
        match status {
            201 => {
                stored += 1;
                println!(
                    "stored    {name}: {} chunk(s), id {}",
                    reply["chunks"],
                    reply["id"].as_str().unwrap_or("?")
                );
            }
            200 => {
                unchanged += 1;
                println!("unchanged {name}");
            }
            _ => {
                refused += 1;
                println!(
                    "refused   {name}: HTTP {status} {} {}",
                    reply["detail"].as_str().unwrap_or(""),
                    reply
                        .get("errors")
                        .map(|e| e.to_string())
                        .unwrap_or_default()
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
