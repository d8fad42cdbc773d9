//! `wattmesh deployments`: list deployments and scale them.

use anyhow::Result;
use wattmesh_proto::api::{Deployment, DeploymentPatch};

use crate::cli::DeploymentsCommand;
use crate::client::ControlClient;
use crate::commands::{print_json, table};

pub async fn run(cmd: DeploymentsCommand) -> Result<()> {
    match cmd {
        DeploymentsCommand::List { json, target } => {
            let list: Vec<Deployment> = ControlClient::from_target(&target)?
                .get("/deployments")
                .await?;
            if json {
                return print_json(&list);
            }
            let mut t = table(&["deployment", "model", "replicas", "unschedulable"]);
            for d in list {
                t.add_row(vec![
                    d.name,
                    d.model,
                    d.replicas.to_string(),
                    d.unschedulable.to_string(),
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
