//! Wall-clock timestamps for records.
use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}
