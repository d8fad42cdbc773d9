//! `wattmesh keys`: create, list and revoke customers' API keys.

use anyhow::{Result, bail};
use wattmesh_proto::api::{ApiKey, ApiKeyCreated, ApiKeySpec, KeyPriority, KeyStatus};

use crate::cli::KeysCommand;
use crate::client::ControlClient;
use crate::commands::{print_json, table};

pub async fn run(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create {
            tenant,
            name,
            models,
            expires_at,
            priority,
            limits,
            target,
        } => {
            let Some(priority) = KeyPriority::parse(&priority) else {
                bail!("--priority {priority:?}: use interactive or batch");
            };
            // The tenant must exist: a typo is an error, never a new tenant.
            let created: ApiKeyCreated = ControlClient::from_target(&target)?
                .post(
                    "/keys",
                    &ApiKeySpec {
                        tenant: tenant.clone(),
                        name,
                        models: (!models.is_empty()).then_some(models),
                        expires_at,
                        priority,
                        limits: limits.limits(),
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
            let mut t = table(&[
                "id",
                "prefix",
                "tenant",
                "name",
                "status",
                "created",
                "last used",
                "revoked",
            ]);
            for k in keys {
                let status = match k.status {
                    KeyStatus::Active => "active",
                    KeyStatus::Revoked => "revoked",
                    KeyStatus::Expired => "expired",
                };
                let revoked = match (&k.revoked_at, &k.revoked_by) {
                    (Some(at), Some(by)) => format!("{at} by {by}"),
                    (Some(at), None) => at.clone(),
                    _ => String::new(),
                };
                t.add_row(vec![
                    k.id,
                    k.prefix,
                    k.tenant,
                    k.name.unwrap_or_default(),
                    status.to_owned(),
                    k.created_at,
                    k.last_used_at.unwrap_or_else(|| "never".into()),
                    revoked,
                ]);
            }
            println!("{t}");
        }
        KeysCommand::Revoke { id, target } => {
            let key: ApiKey = ControlClient::from_target(&target)?
                .delete(&format!("/keys/{id}"))
                .await?;
            println!("revoked {} ({}, tenant {})", key.id, key.prefix, key.tenant);
        }
    }
    Ok(())
}
