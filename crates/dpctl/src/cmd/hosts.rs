//! `dpctl hosts`: the live host-workers as the scheduler sees them — which one holds the SPM role,
//! their job slots and load, and the storage domains each reaches (what host selection chooses from).
use anyhow::Context as _;
use datapath_api::pb;

use super::Context;
use crate::output::{self, Output};

/// Lists the live hosts.
pub async fn run(ctx: &Context) -> anyhow::Result<()> {
    let mut scheduler = ctx.scheduler().await?;
    let response = scheduler
        .list_hosts(pb::ListHostsRequest {})
        .await
        .context("list hosts")?
        .into_inner();
    if ctx.output() == Output::Json {
        return output::print_json(&response);
    }
    println!("{}", hosts_table(&response));
    if response.spm_host_id.is_empty() {
        eprintln!("dpctl: note: no host holds the SPM role");
    }
    Ok(())
}

/// The table of `dpctl hosts`: the SPM is marked in the ROLE column (`spm`, else `hsm`).
pub fn hosts_table(response: &pb::ListHostsResponse) -> String {
    let rows: Vec<Vec<String>> = response
        .hosts
        .iter()
        .map(|status| {
            let h = status.host.clone().unwrap_or_default();
            let spm = status.is_spm || (!h.host_id.is_empty() && h.host_id == response.spm_host_id);
            vec![
                h.host_id,
                if spm { "spm" } else { "hsm" }.to_string(),
                h.address,
                format!("{}/{}", h.running_jobs, h.job_slots),
                output::bytes(h.bytes_in_flight),
                output::or_dash(&h.storage_domain_ids.join(",")).to_string(),
            ]
        })
        .collect();
    output::table(
        &["HOST_ID", "ROLE", "ADDRESS", "JOBS", "IN_FLIGHT", "DOMAINS"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, spm: bool) -> pb::HostStatus {
        pb::HostStatus {
            host: Some(pb::Host {
                host_id: id.into(),
                address: format!("{id}:7301"),
                storage_domain_ids: vec!["sd1".into(), "sd2".into()],
                job_slots: 4,
                running_jobs: 1,
                bytes_in_flight: 1 << 30,
                ..Default::default()
            }),
            is_spm: spm,
        }
    }

    #[test]
    fn the_spm_is_marked_with_load_and_domains() {
        let response = pb::ListHostsResponse {
            hosts: vec![host("h1", false), host("h2", true)],
            spm_host_id: "h2".into(),
        };
        assert_eq!(
            hosts_table(&response),
            "HOST_ID  ROLE  ADDRESS  JOBS  IN_FLIGHT  DOMAINS\n\
             h1       hsm   h1:7301  1/4   1G         sd1,sd2\n\
             h2       spm   h2:7301  1/4   1G         sd1,sd2"
        );
    }
}
