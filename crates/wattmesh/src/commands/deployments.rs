//! `wattmesh deployments`: create, list and scale deployments.

use anyhow::Result;
use wattmesh_proto::api::{Deployment, DeploymentPatch, DeploymentSpec};

use crate::cli::DeploymentsCommand;
use crate::client::ControlClient;
use crate::commands::{print_json, table};

pub async fn run(cmd: DeploymentsCommand) -> Result<()> {
    match cmd {
        DeploymentsCommand::Create {
            name,
            model,
            replicas,
            dedicated_to,
            target,
        } => {
            let spec = DeploymentSpec {
                name,
                model,
                replicas,
                dedicated_to,
            };
            let d: Deployment = ControlClient::from_target(&target)?
                .post("/deployments", &spec)
                .await?;
            match &d.dedicated_to {
                Some(t) => println!(
                    "created deployment {} of {} ({} replicas), dedicated to {t}",
                    d.name, d.model, d.replicas
                ),
                None => println!(
                    "created deployment {} of {} ({} replicas)",
                    d.name, d.model, d.replicas
                ),
            }
        }
        DeploymentsCommand::List { json, target } => {
            let list: Vec<Deployment> = ControlClient::from_target(&target)?
                .get("/deployments")
                .await?;
            if json {
                return print_json(&list);
            }
            let mut t = table(&[
                "deployment",
                "model",
                "replicas",
                "unschedulable",
                "dedicated to",
            ]);
            for d in list {
                t.add_row(vec![
                    d.name,
                    d.model,
                    d.replicas.to_string(),
                    d.unschedulable.to_string(),
                    d.dedicated_to.unwrap_or_default(),
                ]);
            }
            println!("{t}");
        }
        DeploymentsCommand::Scale {
            name,
            replicas,
            target,
        } => {
            let d: Deployment = ControlClient::from_target(&target)?
                .patch(
                    &format!("/deployments/{name}"),
                    &DeploymentPatch { replicas },
                )
                .await?;
            println!("deployment {} scaled to {} replicas", d.name, d.replicas);
        }
    }
    Ok(())
}
