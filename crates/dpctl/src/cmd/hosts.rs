//! `dpctl hosts`: the live host-workers, as the job-tracker sees them.
use anyhow::Context as _;
use datapath_api::pb;

use super::Context;
use crate::output::{self, Output};

/// Lists the registered hosts.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut jt = ctx.job_tracker().await?;
    let response = jt
        .list_registered_hosts(pb::ListRegisteredHostsRequest {})
        .await
        .context("list registered hosts")?
        .into_inner();
    if ctx.output() == Output::Json {
        return output::print_json(&response);
    }
    let rows: Vec<Vec<String>> = response
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host_id.clone(),
                h.address.clone(),
                format!("{}/{}", h.running_jobs, h.job_slots),
                output::bytes(h.bytes_in_flight),
                output::or_dash(&h.storage_domain_ids.join(",")).to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["HOST_ID", "ADDRESS", "JOBS", "IN_FLIGHT", "DOMAINS"],
            &rows
        )
    );
    Ok(())
}
