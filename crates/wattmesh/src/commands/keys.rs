//! `wattmesh keys`: create, list and revoke customers' API keys.

use anyhow::Result;
use wattmesh_proto::api::{ApiKey, ApiKeyCreated, ApiKeySpec, Tenant};

use crate::cli::KeysCommand;
use crate::client::{ControlClient, Created};
use crate::commands::{print_json, table};

pub async fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create {
            tenant,
            name,
            target,
        } => {
            let client = ControlClient::from_target(&target)?;
            // A key is how a tenant starts; naming a new tenant creates it.
            if let Created::New(_) = client
                .create::<_, Tenant>(
                    "/tenants",
                    &Tenant {
                        name: tenant.clone(),
                    },
                )
                .await?
            {
                eprintln!("created tenant {tenant}");
            }
            let created: ApiKeyCreated = client
                .post(
                    "/keys",
                    &ApiKeySpec {
                        tenant: tenant.clone(),
                        name,
                    },
                )
                .await?;
            eprintln!(
                "created key {} for tenant {tenant}; the secret is shown only now:",
                created.key.id
            );
            // The secret is the last line of stdout, for scripts.
            println!("{}", created.secret);
        }
        KeysCommand::List { json, target } => {
            let keys: Vec<ApiKey> = ControlClient::from_target(&target)?.get("/keys").await?;
            if json {
                return print_json(&keys);
            }
            let mut t = table(&["id", "tenant", "name", "prefix", "created"]);
            for k in keys {
                t.add_row(vec![
                    k.id,
                    k.tenant,
                    k.name.unwrap_or_default(),
                    k.prefix,
                    k.created_at,
                ]);
            }
            println!("{t}");
        }
        KeysCommand::Revoke { id, target } => {
            ControlClient::from_target(&target)?
                .delete(&format!("/keys/{id}"))
                .await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
