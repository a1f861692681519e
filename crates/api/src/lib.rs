//! The datapath API: the code generated from `proto/datapath/v1`, its descriptor set for reflection,
//! and the domain types that incoming messages are converted into (validated once, at the edge).
#![warn(missing_docs)]

pub mod error;
pub mod ids;
pub mod job_error;
pub mod limits;
pub mod page;
pub mod time;
pub mod volume;

/// Generated protobuf and tonic code for `datapath.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("datapath.v1");
}

/// The encoded `FileDescriptorSet` of every datapath `.proto`, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/datapath_descriptor.bin"));
