//! Rendering of responses: proto3 JSON for `-o json`, done generically through the API's descriptor
//! set (encode the prost message, decode it as a `DynamicMessage` by its full name, serialize), and
//! the small helpers of the text output (enum names, sizes, aligned tables).
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use datapath_api::pb;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

/// The output format of read commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Compact human lines and tables.
    #[default]
    Text,
    /// proto3 JSON of the response messages.
    Json,
}

/// A generated message with its full protobuf name, so it can be rendered as JSON.
pub trait ProtoMessage: Message {
    /// E.g. `datapath.v1.Job`.
    const FULL_NAME: &'static str;
}

macro_rules! proto_names {
    ($($name:ident),* $(,)?) => {
        $(impl ProtoMessage for pb::$name {
            const FULL_NAME: &'static str = concat!("datapath.v1.", stringify!($name));
        })*
    };
}

proto_names!(
    Job,
    Host,
    VolumeInfo,
    StorageDomain,
    CreateStorageDomainResponse,
    ListStorageDomainsResponse,
    CreateVolumeResponse,
    GetVolumeInfoResponse,
    ListImagesResponse,
    ListVolumesResponse,
    DeleteImageResponse,
    CopyDataResponse,
    GetJobResponse,
    ListJobsResponse,
    AbortJobResponse,
    WatchJobsResponse,
    ListRegisteredHostsResponse,
    Operation,
    MoveDiskResponse,
    CloneDiskResponse,
    GetOperationResponse,
    ListOperationsResponse,
    WatchOperationResponse,
    CancelOperationResponse,
    GetDiskStatusResponse,
    ListHostsResponse,
    GetConfigResponse,
    SetConfigResponse,
    VolumeLease,
    Flow,
    DiskLock,
);

/// The API's descriptor pool, decoded once.
pub fn pool() -> anyhow::Result<&'static DescriptorPool> {
    static POOL: OnceLock<Result<DescriptorPool, String>> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(datapath_api::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| anyhow!("decode the API descriptor set: {e}"))
}

/// `message` as proto3 JSON (enum names, lowerCamelCase fields, RFC 3339 timestamps, 64-bit
/// integers as strings), with zero-valued fields included so scripts always find them.
pub fn to_json<M: ProtoMessage>(message: &M) -> anyhow::Result<serde_json::Value> {
    let descriptor = pool()?
        .get_message_by_name(M::FULL_NAME)
        .with_context(|| format!("find message {} in the descriptor set", M::FULL_NAME))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("decode {}", M::FULL_NAME))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    dynamic
        .serialize_with_options(serde_json::value::Serializer, &options)
        .with_context(|| format!("render {} as JSON", M::FULL_NAME))
}

/// Prints `message` as pretty JSON on stdout.
pub fn print_json<M: ProtoMessage>(message: &M) -> anyhow::Result<()> {
    let value = to_json(message)?;
    let text = serde_json::to_string_pretty(&value).context("format JSON")?;
    println!("{text}");
    Ok(())
}

/// Prints `message` as one line of JSON on stdout (for streams).
pub fn print_json_line<M: ProtoMessage>(message: &M) -> anyhow::Result<()> {
    let value = to_json(message)?;
    println!("{value}");
    Ok(())
}

/// `JOB_STATUS_RUNNING` → `running`: a protobuf enum name without its prefix, lower case.
fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix)
        .unwrap_or(name)
        .to_ascii_lowercase()
}

/// A job status for humans, e.g. `running`; the number when it is unknown.
pub fn job_status(value: i32) -> String {
    pb::JobStatus::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "JOB_STATUS_"),
    )
}

/// A volume format for humans (`raw`, `cow`).
pub fn volume_format(value: i32) -> String {
    pb::VolumeFormat::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "VOLUME_FORMAT_"),
    )
}

/// A volume allocation for humans (`sparse`, `preallocated`).
pub fn volume_allocation(value: i32) -> String {
    pb::VolumeAllocation::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "VOLUME_ALLOCATION_"),
    )
}

/// A volume role for humans (`shared`, `leaf`, `internal`).
pub fn volume_role(value: i32) -> String {
    pb::VolumeRole::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "VOLUME_ROLE_"),
    )
}

/// A legality for humans (`legal`, `illegal`).
pub fn legality(value: i32) -> String {
    pb::Legality::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "LEGALITY_"),
    )
}

/// A job event type for humans (`snapshot`, `put`, `deleted`).
pub fn event_type(value: i32) -> String {
    pb::JobEventType::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "JOB_EVENT_TYPE_"),
    )
}

/// An operation kind for humans (`move_disk`, `clone_disk`).
pub fn operation_kind(value: i32) -> String {
    pb::OperationKind::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "OPERATION_KIND_"),
    )
}

/// An operation step for humans (`clone_structure`, `copy_data`, `delete_source`, …).
pub fn operation_step(value: i32) -> String {
    pb::OperationStep::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "OPERATION_STEP_"),
    )
}

/// A disk status for humans (`ok`, `locked`, `illegal`).
pub fn disk_status(value: i32) -> String {
    pb::DiskStatus::try_from(value).map_or_else(
        |_| value.to_string(),
        |s| short(s.as_str_name(), "DISK_STATUS_"),
    )
}

/// Bytes for humans, in powers of 1024: `512B`, `1.5K`, `10G`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["K", "M", "G", "T", "P"];
    if n < 1024 {
        return format!("{n}B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text}{}", UNITS[unit])
}

/// A timestamp in RFC 3339, or `-`.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map_or_else(|| "-".to_string(), ToString::to_string)
}

/// `text`, or `-` when it is empty.
pub fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// Formats `rows` under `headers` as left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut lines = vec![line(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> pb::Job {
        pb::Job {
            job_id: "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d".into(),
            host_id: "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01".into(),
            status: pb::JobStatus::Failed as i32,
            progress: 42,
            error: Some(pb::JobError {
                code: "COPY_FAILED".into(),
                message: "qemu-img exited 1".into(),
            }),
            entities: vec!["a/b/c".into()],
            created_at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            size_bytes: 1 << 30,
            ..pb::Job::default()
        }
    }

    #[test]
    fn a_job_renders_as_proto3_json() {
        let json = to_json(&job()).unwrap();
        assert_eq!(json["jobId"], "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d");
        assert_eq!(json["status"], "JOB_STATUS_FAILED");
        assert_eq!(json["progress"], 42);
        assert_eq!(json["error"]["code"], "COPY_FAILED");
        assert_eq!(json["entities"][0], "a/b/c");
        assert_eq!(json["createdAt"], "2023-11-14T22:13:20Z");
        assert_eq!(
            json["sizeBytes"], "1073741824",
            "uint64 is a string in proto3 JSON"
        );
        assert_eq!(json["abortRequested"], false, "defaults are emitted");
    }

    #[test]
    fn nested_responses_render() {
        let response = pb::ListJobsResponse {
            jobs: vec![job()],
            next_page_token: String::new(),
        };
        let json = to_json(&response).unwrap();
        assert_eq!(json["jobs"][0]["progress"], 42);
        assert_eq!(json["nextPageToken"], "");
    }

    #[test]
    fn enums_and_sizes_read_well() {
        assert_eq!(job_status(pb::JobStatus::Running as i32), "running");
        assert_eq!(job_status(99), "99");
        assert_eq!(volume_format(pb::VolumeFormat::Cow as i32), "cow");
        assert_eq!(
            operation_step(pb::OperationStep::CopyData as i32),
            "copy_data"
        );
        assert_eq!(
            operation_kind(pb::OperationKind::MoveDisk as i32),
            "move_disk"
        );
        assert_eq!(disk_status(pb::DiskStatus::Locked as i32), "locked");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1 << 30), "1G");
        assert_eq!(bytes(1536), "1.5K");
    }

    #[test]
    fn an_operation_renders_as_proto3_json() {
        let op = pb::Operation {
            name: "operations/0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d".into(),
            metadata: Some(pb::OperationMetadata {
                kind: pb::OperationKind::MoveDisk as i32,
                step: pb::OperationStep::CopyData as i32,
                progress: 40,
                volumes: vec![pb::VolumeProgress {
                    volume_id: "v".into(),
                    size_bytes: 1 << 30,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            done: true,
            result: Some(pb::operation::Result::Error(pb::OperationError {
                code: 9,
                message: "no host reaches both domains".into(),
                reason: "NO_HOST".into(),
            })),
        };
        let json = to_json(&pb::WatchOperationResponse {
            operation: Some(op),
        })
        .unwrap();
        let op = &json["operation"];
        assert_eq!(op["metadata"]["step"], "OPERATION_STEP_COPY_DATA");
        assert_eq!(op["metadata"]["volumes"][0]["sizeBytes"], "1073741824");
        assert_eq!(op["error"]["reason"], "NO_HOST");
        assert_eq!(op["done"], true);
    }

    #[test]
    fn tables_align() {
        let rows = vec![vec!["a".to_string(), "x".to_string()]];
        assert_eq!(table(&["LONG", "B"], &rows), "LONG  B\na     x");
    }
}
