//! The command line: global flags and the subcommand tree, each group in its own `cmd/` file.
use clap::{Parser, Subcommand};

use crate::cmd::{self, Context, GlobalArgs};

/// dpctl: the datapath CLI, over the scheduler's, job-tracker's and host-workers' gRPC APIs.
#[derive(Debug, Parser)]
#[command(name = "dpctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the live hosts as the scheduler sees them: the SPM, load, job slots, domains.
    Hosts,
    /// Move, clone and inspect disks through the scheduler.
    #[command(subcommand)]
    Disk(cmd::disk::DiskCommand),
    /// The scheduler's long-running disk operations.
    #[command(subcommand)]
    Ops(cmd::ops::OpsCommand),
    /// The scheduler's runtime settings.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Storage domains of a host.
    #[command(subcommand)]
    Domain(cmd::domain::DomainCommand),
    /// Volumes of a storage domain.
    #[command(subcommand)]
    Volume(cmd::volume::VolumeCommand),
    /// Images (disks) of a storage domain.
    #[command(subcommand)]
    Image(cmd::image::ImageCommand),
    /// Copy a volume's data into another volume on a host, and follow the job.
    CopyData(cmd::copy::CopyDataArgs),
    /// Jobs, through the job-tracker.
    #[command(subcommand)]
    Jobs(cmd::jobs::JobsCommand),
    /// Decode etcd records: `etcdctl get --prefix /datapath/ -w json | dpctl decode`.
    Decode(cmd::decode::DecodeArgs),
    /// Debugging: datapath's state read straight from etcd, decoded.
    #[command(subcommand)]
    Debug(cmd::debug::DebugCommand),
    /// A local cluster of child processes, for development.
    #[command(subcommand)]
    Local(cmd::local::LocalCommand),
    /// The cluster CA and the certificates of services and people (mutual TLS).
    #[command(subcommand)]
    Certs(cmd::certs::CertsCommand),
}

impl Cli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        let insecure = self.global.tls.insecure;
        let ctx = Context::new(self.global);
        match self.command {
            Command::Hosts => cmd::hosts::run(&ctx).await,
            Command::Disk(c) => c.run(&ctx).await,
            Command::Ops(c) => c.run(&ctx).await,
            Command::Config(c) => c.run(&ctx).await,
            Command::Domain(c) => c.run(&ctx).await,
            Command::Volume(c) => c.run(&ctx).await,
            Command::Image(c) => c.run(&ctx).await,
            Command::CopyData(args) => args.run(&ctx).await,
            Command::Jobs(c) => c.run(&ctx).await,
            Command::Decode(args) => args.run(),
            Command::Debug(c) => c.run(&ctx).await,
            Command::Local(c) => c.run(insecure).await,
            Command::Certs(c) => c.run(),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_tree_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        let err =
            Cli::try_parse_from(["dpctl", "copy-data", "--src", "x", "--dst", "y"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from([
            "dpctl", "volume", "create", "--domain", "nope", "--size", "1G",
        ])
        .unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let ok = Cli::try_parse_from([
            "dpctl",
            "-o",
            "json",
            "volume",
            "info",
            "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01/0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d/a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d",
        ]);
        assert!(ok.is_ok(), "{ok:?}");
    }

    const SD: &str = "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01";
    const IMG: &str = "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";
    const SD2: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("dpctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_scheduler_flag_has_a_default_and_takes_an_address() {
        let cli = parse(&["hosts"]).unwrap();
        assert_eq!(cli.global.scheduler, "http://127.0.0.1:7302");
        let cli = parse(&["ops", "list", "--scheduler", "10.0.0.1:9000"]).unwrap();
        assert_eq!(
            cli.global.scheduler, "10.0.0.1:9000",
            "global after the subcommand"
        );
    }

    #[test]
    fn scheduler_commands_parse() {
        for args in [
            vec!["disk", "move", SD, IMG, SD2],
            vec![
                "disk",
                "move",
                SD,
                IMG,
                SD2,
                "--detach",
                "--request-id",
                IMG,
            ],
            vec!["disk", "status", SD, IMG],
            vec!["ops", "list", "--done", "false", "--image-id", IMG],
            vec!["ops", "get", IMG],
            vec!["ops", "watch", &format!("operations/{IMG}")],
            vec!["-o", "json", "ops", "cancel", IMG],
            vec!["config", "get", "data_operations_by_hsm"],
            vec!["config", "set", "data_operations_by_hsm", "false"],
        ] {
            assert!(parse(&args).is_ok(), "{args:?}: {:?}", parse(&args).err());
        }
    }

    #[test]
    fn bad_scheduler_arguments_are_usage_errors() {
        for args in [
            vec!["disk", "move", SD, IMG],
            vec!["disk", "move", SD, "not-a-uuid", SD2],
            vec!["disk", "move", SD, IMG, SD2, "--request-id", "x"],
            vec!["disk", "clone", SD, IMG, SD2, SD, "--format", "qcow9"],
            vec!["ops", "list", "--done", "maybe"],
            vec!["ops", "get", "operations/nope"],
            vec!["ops", "cancel", "jobs/6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01"],
            vec!["config", "set", "data_operations_by_hsm"],
            vec!["config", "get", " "],
        ] {
            let err = parse(&args).err();
            assert_eq!(err.map(|e| e.exit_code()), Some(2), "{args:?}");
        }
    }
}
