//! Everything under the etcd prefix can be hand-edited with etcdctl or written by another version:
//! no key or value may panic a decoder, and whatever decodes must survive encode → decode.
//!
//! Input: one byte `n`, then `n` bytes of key (fewer if the input ends), then the value.
#![no_main]

use datapath_api::{ids::OperationId, pb};
use datapath_coord::{
    generations::decode_generation,
    keys::{RecordKind, DEFAULT_PREFIX},
    Keys,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// Decodes `value` as `M`; what decodes must encode to something that decodes to the same.
fn round_trip<M: Message + Default + PartialEq + std::fmt::Debug>(value: &[u8]) {
    if let Ok(m) = M::decode(value) {
        let again = M::decode(m.encode_to_vec().as_slice()).expect("a re-encoded record decodes");
        assert_eq!(again, m);
    }
}

/// The message types decoded above, by their full names.
const KNOWN: [&str; 5] = [
    "datapath.v1.Host",
    "datapath.v1.VolumeLease",
    "datapath.v1.Job",
    "datapath.v1.Flow",
    "datapath.v1.DiskLock",
];

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(n).min(rest.len()));

    // Every message type the layout stores (keys.rs, snapshot.rs), whatever the key says.
    round_trip::<pb::Host>(value);
    round_trip::<pb::VolumeLease>(value);
    round_trip::<pb::Job>(value);
    round_trip::<pb::Flow>(value);
    round_trip::<pb::DiskLock>(value);
    if let Ok(job) = pb::Job::decode(value) {
        // What the job-tracker reads of a record must not panic on unknown enum values.
        let _ = (job.status(), job.status().as_str_name());
    }
    if let Ok(flow) = pb::Flow::decode(value) {
        for v in &flow.volumes {
            let _ = (
                v.state(),
                v.job_status(),
                v.format(),
                v.allocation(),
                v.role(),
            );
        }
    }

    // generations/: decimal text.
    if let Ok(g) = decode_generation(key, value) {
        assert_eq!(
            std::str::from_utf8(value).ok().and_then(|v| v.parse().ok()),
            Some(g)
        );
        assert_eq!(
            decode_generation(key, g.to_string().as_bytes()).ok(),
            Some(g)
        );
    }
    // requests/: an operation id as text.
    let _ = OperationId::parse("request_id", &String::from_utf8_lossy(value));

    for keys in [Keys::new(DEFAULT_PREFIX), Keys::new("")] {
        let kind = std::str::from_utf8(key).ok().and_then(|k| keys.kind_of(k));
        if let Some(name) = kind.and_then(RecordKind::message_name) {
            // A new record type needs a round_trip line above.
            assert!(
                KNOWN.contains(&name),
                "{name} is not decoded by this target"
            );
        }
        if let Some(job) = keys.parse_job(key) {
            assert_eq!(kind, Some(RecordKind::Job));
            assert_eq!(keys.parse_job(keys.job(job).as_bytes()), Some(job));
        }
        if let Some(op) = keys.parse_flow(key) {
            assert_eq!(kind, Some(RecordKind::Flow));
            assert_eq!(keys.parse_flow(keys.flow(op).as_bytes()), Some(op));
        }
        if let Some(v) = keys.parse_generation(key) {
            assert_eq!(kind, Some(RecordKind::Config));
            assert_eq!(
                keys.parse_generation(keys.generation(&v).as_bytes()),
                Some(v)
            );
            assert_eq!(keys.parse_volume_lease(key), None);
        }
        if let Some(v) = keys.parse_volume_lease(key) {
            assert_eq!(kind, Some(RecordKind::VolumeLease));
            assert_eq!(
                keys.parse_volume_lease(keys.volume_lease(&v).as_bytes()),
                Some(v)
            );
        }
    }
});
