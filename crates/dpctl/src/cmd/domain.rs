//! `dpctl domain create|list`: storage domains on the chosen host's storage root.
use anyhow::Context as _;
use clap::Subcommand;
use datapath_api::pb;

use super::Context;
use crate::{
    output::{self, Output},
    parse::uuid_arg,
};

/// Storage domain commands.
#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Create a storage domain; prints its id.
    Create {
        /// Its id; a new one when absent.
        #[arg(long, env = "DATAPATH_DOMAIN_ID", value_parser = uuid_arg)]
        id: Option<String>,
        /// Its name.
        #[arg(long, env = "DATAPATH_DOMAIN_NAME", default_value = "")]
        name: String,
    },
    /// List the storage domains the host reaches.
    List,
}

impl DomainCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let mut host = ctx.host_worker().await?;
        match self {
            Self::Create { id, name } => {
                let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let response = host
                    .create_storage_domain(pb::CreateStorageDomainRequest {
                        storage_domain_id: id.clone(),
                        name,
                    })
                    .await
                    .with_context(|| format!("create storage domain {id}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => println!("{id}"),
                }
            }
            Self::List => {
                let response = host
                    .list_storage_domains(pb::ListStorageDomainsRequest {})
                    .await
                    .context("list storage domains")?
                    .into_inner();
                if ctx.output() == Output::Json {
                    return output::print_json(&response);
                }
                let rows: Vec<Vec<String>> = response
                    .storage_domains
                    .iter()
                    .map(|d| {
                        vec![
                            d.storage_domain_id.clone(),
                            output::or_dash(&d.name).to_string(),
                            output::timestamp(d.created_at.as_ref()),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    output::table(&["STORAGE_DOMAIN_ID", "NAME", "CREATED"], &rows)
                );
            }
        }
        Ok(())
    }
}
