//! `datapath-bench`: measures datapath on a local cluster of release binaries, each figure beside a
//! baseline taken in the same run. See BENCHMARKS.md for the command and the last results.
//!
//! - `copy`: a 2 GiB raw volume (half random data, half zeros) through CopyData, against the same
//!   `qemu-img convert` run directly; median of N rounds, alternating which goes first.
//! - `accept`: CopyData's answer time while ≥ 50 jobs wait in the host's queue.
//! - `etcd-writes`: etcd writes one copy job causes, for growing volume sizes.
//! - `spread`: six disks moved at once over three bandwidth-limited hosts, against the same moves
//!   with every copy on the SPM (`data_operations_by_hsm=false`); then the scheduling overhead,
//!   MoveDisk's answer → the first byte copied.
//! - `telemetry`: RPC latency and copy time with an OTLP exporter against none, in one run.
//! - `tls`: RPC latency, connections and copy time with mutual TLS against `--insecure`, in one run.
//! - `flood`: a 2 GiB copy alone and while one client opens 1,000 WatchJobs streams and loops on
//!   malformed calls; another client's latency meanwhile.
//! - `moves`: M MoveDisks of 1 MiB disks at once on three hosts, for each M in `--counts`: wall
//!   time and the scheduler's, job-tracker's and etcd's CPU time per move (not part of `all`).
//! - `scale`: N host-workers with simulated copies and M MoveDisks at once, for each N in
//!   `--hosts` and M in `--ops`: the control plane's time, latencies, CPU, etcd writes and memory
//!   (not part of `all`).
//! - `lost-host`: a host with copies in flight SIGKILLed among N hosts, for each N in `--hosts`:
//!   kill → its jobs ended, → its copies re-placed, → every move done (not part of `all`).
//! - `native-copy`: the native copier's engine between two qemu-nbds against `qemu-img convert`
//!   alone, on a 2 GiB half-random raw image (not part of `all`).
mod accept;
mod cluster;
mod copy;
mod etcd_writes;
mod flood;
mod lost_host;
mod moves;
mod native_copy;
mod scale;
mod side;
mod spread;
mod telemetry;
mod tls;

use clap::Parser;

#[derive(Parser)]
#[command(about = "datapath benchmarks")]
struct Args {
    /// Which benchmark: copy, accept, etcd-writes, spread, telemetry, tls, flood, all, moves,
    /// scale, lost-host or native-copy.
    #[arg(default_value = "all")]
    which: String,
    /// Rounds of the copy benchmark (default 5) and of the spread benchmark (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Single moves timed for the spread benchmark's scheduling overhead.
    #[arg(long, default_value_t = 30)]
    moves: usize,
    /// The spread benchmark's per-host bandwidth limit in MiB/s (0: none).
    #[arg(long, default_value_t = 32)]
    host_limit_mib: u64,
    /// The numbers of simultaneous moves of the `moves` benchmark.
    #[arg(long, value_delimiter = ',', default_value = "30,300,1000")]
    counts: Vec<usize>,
    /// The numbers of host-workers of the `scale` and `lost-host` benchmarks.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    hosts: Vec<usize>,
    /// The numbers of simultaneous operations of the `scale` benchmark.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    ops: Vec<usize>,
    /// The host-workers' session TTL in the `scale` benchmark: etcd's idle cost is their
    /// keep-alives, one per host every TTL ÷ 3.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    session_ttl: std::time::Duration,
    /// `KEY=VALUE` set in every service of the `scale` benchmark's clusters (repeatable), e.g.
    /// `DATAPATH_VOLUME_VIEW=on`: the launcher does not pass on the `DATAPATH_*` variables of the
    /// benchmark's own environment, so that a shell's settings never change a measured cluster.
    #[arg(long = "service-env", value_parser = parse_env)]
    service_env: Vec<(String, String)>,
    /// The native copier's piece size in KiB (`native-copy`).
    #[arg(long, default_value_t = 2048)]
    native_chunk_kib: u32,
    /// The native copier's pieces in flight (`native-copy`).
    #[arg(long, default_value_t = 8)]
    native_in_flight: usize,
    /// `native-copy`: only the dense 2 GiB case.
    #[arg(long)]
    dense_only: bool,
    /// Where the clusters keep their files (needs ~6 GiB free for `copy`).
    #[arg(long, env = "DATAPATH_BENCH_DIR")]
    dir: Option<std::path::PathBuf>,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    Ok((key.to_string(), value.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir(),
    };
    let all = args.which == "all";
    if ![
        "all",
        "copy",
        "accept",
        "etcd-writes",
        "spread",
        "telemetry",
        "tls",
        "flood",
        "moves",
        "scale",
        "lost-host",
        "native-copy",
    ]
    .contains(&args.which.as_str())
    {
        anyhow::bail!("unknown benchmark {:?}", args.which);
    }
    if all || args.which == "copy" {
        copy::run(&base, args.rounds.unwrap_or(5)).await?;
    }
    if all || args.which == "accept" {
        accept::run(&base).await?;
    }
    if all || args.which == "etcd-writes" {
        etcd_writes::run(&base).await?;
    }
    if all || args.which == "spread" {
        spread::run(
            &base,
            args.rounds.unwrap_or(3),
            args.moves,
            args.host_limit_mib << 20,
        )
        .await?;
    }
    if all || args.which == "telemetry" {
        telemetry::run(&base, args.rounds.unwrap_or(5)).await?;
    }
    if all || args.which == "tls" {
        tls::run(&base, args.rounds.unwrap_or(5)).await?;
    }
    if args.which == "scale" {
        let settings = scale::Settings {
            session_ttl: args.session_ttl,
            env: args.service_env.clone(),
        };
        scale::run(&base, &args.hosts, &args.ops, &settings).await?;
    }
    if args.which == "moves" {
        moves::run(&base, &args.counts).await?;
    }
    if args.which == "native-copy" {
        let tuning = native_copy::Tuning {
            chunk: args.native_chunk_kib << 10,
            in_flight: args.native_in_flight,
            dense_only: args.dense_only,
        };
        native_copy::run(&base, args.rounds.unwrap_or(5), &tuning).await?;
    }
    if args.which == "lost-host" {
        lost_host::run(&base, &args.hosts).await?;
    }
    if all || args.which == "flood" {
        flood::run(&base, args.rounds.unwrap_or(4)).await?;
    }
    Ok(())
}
