//! dpctl: the datapath CLI over the job-tracker's and host-workers' gRPC APIs, and [`local`], the
//! launcher of a local cluster (etcd, a job-tracker, N host-workers) used by `dpctl local up` and by
//! the end-to-end tests.
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod cmd;
pub mod error;
pub mod local;
pub mod output;
pub mod parse;
pub mod spm;

pub use cli::Cli;
