//! Compiles `proto/datapath/v1/*.proto` with protox (no system protoc) and writes the descriptor set
//! that the services serve through reflection.
use std::{env, fs, path::PathBuf};

use prost::Message;

const FILES: &[&str] = &[
    "datapath/v1/common.proto",
    "datapath/v1/host_worker.proto",
    "datapath/v1/job_tracker.proto",
    "datapath/v1/scheduler.proto",
    "datapath/v1/host_selector.proto",
    "datapath/v1/flow.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("datapath_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
