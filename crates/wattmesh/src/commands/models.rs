//! `wattmesh models`: fetch the catalog's model files (sha256-checked, with progress bars) and
//! list the catalog.

use std::path::Path;

use anyhow::{Context, Result, bail};
use wattmesh_agent::{Catalog, CatalogModel};

use crate::cli::ModelsCommand;
use crate::commands::{print_json, table};
use crate::progress::PullBars;

pub async fn run(cmd: ModelsCommand) -> Result<()> {
    let catalog = Catalog::builtin();
    match cmd {
        ModelsCommand::Pull {
            names,
            data_dir,
            models_dir,
        } => {
            let dir = models_dir.unwrap_or_else(|| data_dir.join("models"));
            pull_all(&catalog, &names, &dir).await?;
            println!("models ready in {}", dir.display());
        }
        ModelsCommand::Catalog { json } => {
            if json {
                let names: Vec<_> = catalog
                    .models()
                    .iter()
                    .map(|m| serde_json::json!({"name": m.name, "kind": m.kind, "memory_bytes": m.memory_bytes}))
                    .collect();
                return print_json(&names);
            }
            let mut t = table(&["model", "kind", "memory"]);
            for m in catalog.models() {
                t.add_row(vec![
                    m.name.clone(),
                    m.kind.as_str().to_owned(),
                    format!("{} MiB", m.memory_bytes >> 20),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

/// Pulls the named catalog models (all when `names` is empty) into `dir`.
pub async fn pull_all(catalog: &Catalog, names: &[String], dir: &Path) -> Result<()> {
    let mut wanted: Vec<CatalogModel> = Vec::new();
    if names.is_empty() {
        wanted.extend(catalog.models().iter().cloned());
    }
    for n in names {
        match catalog.get(n) {
            Some(m) => wanted.push(m.clone()),
            None => bail!(
                "no model {n:?} in the catalog (known: {})",
                catalog
                    .models()
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || -> Result<()> {
        let bars = PullBars::new();
        for m in &wanted {
            wattmesh_agent::pull(m, &dir, &bars)
                .with_context(|| format!("fetching model {}", m.name))?;
        }
        Ok(())
    })
    .await
    .context("the model fetch task failed")?
}
