//! etcd writes caused by one copy job (its job record and its volume lease), for growing sizes:
//! they must stay bounded whatever the data size.
use std::path::Path;

use datapath_api::pb::Legality;
use etcd_client::{GetOptions, WatchOptions};

use crate::cluster::{fill_raw, Bench};

pub async fn run(base: &Path) -> anyhow::Result<()> {
    let mut b = Bench::start(base, 2, vec![]).await?;
    let mut etcd =
        etcd_client::Client::connect(b.cluster.etcd_endpoints(), b.cluster.etcd_options()).await?;
    let prefix = b.cluster.etcd_prefix().to_string();
    let (a, d) = (b.domain().await?, b.domain().await?);
    println!("## etcd writes per copy job");
    println!("| volume size | copy time | job record writes | volume lease writes | total |");
    println!("|---|---|---|---|---|");
    for size in [64u64 << 20, 512 << 20, 2 << 30] {
        let img = uuid::Uuid::new_v4().to_string();
        let src = b.raw_volume(&a, &img, size, Legality::Legal).await?;
        fill_raw(&b.path(&src), size / 2)?;
        let dst = b.raw_volume(&d, &img, size, Legality::Illegal).await?;
        let rev = etcd
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let (job_id, took) = b.copy(&src, &dst).await?;
        let (jobs, leases) = (
            format!("{prefix}jobs/{job_id}"),
            format!("{prefix}leases/volumes/{d}/{img}/{}", dst.volume_id),
        );
        let now = etcd
            .get(
                prefix.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await?
            .header()
            .map(|h| h.revision())
            .unwrap_or(0);
        let mut watch = etcd
            .watch(
                prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await?;
        let (mut job_writes, mut lease_writes, mut seen) = (0, 0, rev);
        while seen < now {
            let Some(resp) = watch.message().await? else {
                break;
            };
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                seen = seen.max(kv.mod_revision());
                if kv.mod_revision() > now {
                    continue;
                }
                let key = String::from_utf8_lossy(kv.key());
                if key == jobs {
                    job_writes += 1;
                } else if key == leases {
                    lease_writes += 1;
                }
            }
        }
        println!(
            "| {} MiB | {:.2} s | {job_writes} | {lease_writes} | {} |",
            size >> 20,
            took.as_secs_f64(),
            job_writes + lease_writes
        );
    }
    b.cluster.stop().await?;
    Ok(())
}
