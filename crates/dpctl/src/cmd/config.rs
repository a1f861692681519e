//! `dpctl config get|set`: the scheduler's runtime settings (such as `data_operations_by_hsm`), kept
//! in etcd and applied from the next flow step. The scheduler validates keys and values, so dpctl
//! passes them through and shows its answer.
use anyhow::Context as _;
use clap::Subcommand;
use datapath_api::pb;

use super::Context;
use crate::output::{self, Output};

/// Config commands.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Read a setting.
    Get {
        /// The setting, e.g. data_operations_by_hsm.
        #[arg(value_parser = key_arg)]
        key: String,
    },
    /// Change a setting.
    Set {
        /// The setting, e.g. data_operations_by_hsm.
        #[arg(value_parser = key_arg)]
        key: String,
        /// Its new value, e.g. false.
        value: String,
    },
}

/// A clap value parser for a setting's key: trimmed, not empty.
fn key_arg(text: &str) -> Result<String, String> {
    let key = text.trim();
    if key.is_empty() {
        return Err("a setting's key cannot be empty".to_string());
    }
    Ok(key.to_string())
}

impl ConfigCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let mut scheduler = ctx.scheduler().await?;
        match self {
            Self::Get { key } => {
                let response = scheduler
                    .get_config(pb::GetConfigRequest { key: key.clone() })
                    .await
                    .with_context(|| format!("get setting {key}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => println!("{}={}", response.key, response.value),
                }
            }
            Self::Set { key, value } => {
                let response = scheduler
                    .set_config(pb::SetConfigRequest {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .await
                    .with_context(|| format!("set {key} to {value:?}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => println!("{}={}", response.key, response.value),
                }
            }
        }
        Ok(())
    }
}
