//! `datapath-bench`: measures datapath on a local cluster of release binaries, each figure beside a
//! baseline taken in the same run. See BENCHMARKS.md for the command and the last results.
//!
//! - `copy`: a 2 GiB raw volume (half random data, half zeros) through CopyData, against the same
//!   `qemu-img convert` run directly; median of N rounds, alternating which goes first.
//! - `accept`: CopyData's answer time while ≥ 50 jobs wait in the host's queue.
//! - `etcd-writes`: etcd writes one copy job causes, for growing volume sizes.
mod accept;
mod cluster;
mod copy;
mod etcd_writes;

use clap::Parser;

#[derive(Parser)]
#[command(about = "datapath benchmarks")]
struct Args {
    /// Which benchmark: copy, accept, etcd-writes or all.
    #[arg(default_value = "all")]
    which: String,
    /// Rounds of the copy benchmark.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Where the clusters keep their files (needs ~6 GiB free for `copy`).
    #[arg(long, env = "DATAPATH_BENCH_DIR")]
    dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let all = args.which == "all";
    if all || args.which == "copy" {
        copy::run(&base, args.rounds).await?;
    }
    if all || args.which == "accept" {
        accept::run(&base).await?;
    }
    if all || args.which == "etcd-writes" {
        etcd_writes::run(&base).await?;
    }
    Ok(())
}
