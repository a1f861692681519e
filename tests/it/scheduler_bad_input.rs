//! Bad input to the scheduler: each refused request answers the right code with an `ErrorInfo`
//! naming its reason and field, and changes nothing — no flow, lock, request, config, job or lease
//! key in etcd, no file on storage. What must be accepted instead (one request id sent twice, a
//! template moved while a clone reads it) is in `scheduler_locks`.
use std::{collections::BTreeMap, fmt::Debug, path::Path};

use datapath_api::{
    error::{field, reason},
    pb::{self, VolumeFormat},
};
use tonic::{Code, Status};

use crate::{
    disks::{scheduler, template},
    harness::{file_state, TestCluster},
    placement::{single_disk, wait_hosts_reach},
};

const MIB: u64 = 1 << 20;

/// Every file under the storage root (size, blocks, mtime; the text of metadata files) and every
/// key a scheduler call could write, with its mod revision.
#[derive(Debug, PartialEq)]
pub(crate) struct Snapshot {
    files: BTreeMap<String, String>,
    keys: Vec<(String, i64)>,
}

pub(crate) async fn snapshot(tc: &TestCluster) -> Snapshot {
    fn walk(dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.insert(p.display().to_string(), "dir".into());
                walk(&p, out);
            } else {
                let text = if p.extension().is_some_and(|x| x == "meta") {
                    std::fs::read_to_string(&p).unwrap()
                } else {
                    String::new()
                };
                out.insert(
                    p.display().to_string(),
                    format!("{:?} {text}", file_state(&p)),
                );
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(&tc.cluster.storage_root(), &mut files);
    let layout = tc.layout();
    let mut keys = Vec::new();
    for prefix in [
        layout.flows(),
        layout.disk_locks(),
        layout.requests(),
        layout.configs(),
        layout.jobs(),
        layout.volume_leases(),
    ] {
        keys.extend(tc.keys(&prefix).await);
    }
    Snapshot { files, keys }
}

/// Asserts `err` has `code` and an `ErrorInfo` with `want_reason` naming `want_field`.
pub(crate) fn assert_status(
    what: &str,
    err: &Status,
    code: Code,
    want_reason: &str,
    want_field: &str,
) {
    assert_eq!(err.code(), code, "{what}: {err:?}");
    assert_eq!(reason(err).as_deref(), Some(want_reason), "{what}: {err:?}");
    assert_eq!(field(err).as_deref(), Some(want_field), "{what}: {err:?}");
}

/// Asserts a call was refused as expected and that nothing changed since `before`.
pub(crate) async fn refused<T: Debug>(
    tc: &TestCluster,
    before: &Snapshot,
    what: &str,
    result: Result<T, Status>,
    (code, want_reason, want_field): (Code, &str, &str),
) {
    let err = match result {
        Ok(v) => panic!("{what} was accepted: {v:?}"),
        Err(e) => e,
    };
    assert_status(what, &err, code, want_reason, want_field);
    assert_eq!(&snapshot(tc).await, before, "{what} changed something");
}

pub(crate) fn disk(sd: &str, img: &str) -> Option<pb::DiskRef> {
    Some(pb::DiskRef {
        storage_domain_id: sd.into(),
        image_id: img.into(),
    })
}

pub(crate) fn move_req(sd: &str, img: &str, to: &str, request_id: &str) -> pb::MoveDiskRequest {
    pb::MoveDiskRequest {
        image: disk(sd, img),
        destination_storage_domain_id: to.into(),
        request_id: request_id.into(),
    }
}

pub(crate) fn clone_req(template: &pb::VolumeRef, to: &str) -> pb::CloneDiskRequest {
    pb::CloneDiskRequest {
        template_volume: Some(template.clone()),
        destination_storage_domain_id: to.into(),
        ..Default::default()
    }
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_malformed_and_conflicting_requests_are_refused_and_change_nothing() {
    use Code::{AlreadyExists, FailedPrecondition, InvalidArgument, NotFound};
    let tc = TestCluster::start(1, |_| {}).await.unwrap();
    let (a, b) = (tc.domain().await, tc.domain().await);
    wait_hosts_reach(&tc, &[&a, &b]).await;
    let ok = single_disk(&tc, &a, MIB, 1).await;
    let tpl = template(&tc, &a, 6 * MIB).await;
    let raw = VolumeFormat::Raw;
    let illegal = tc
        .volume(&a, &new_id(), raw, MIB, pb::Legality::Illegal)
        .await;
    // The same image in both domains: its move would overwrite the destination's.
    let both = new_id();
    tc.volume(&a, &both, raw, MIB, pb::Legality::Legal).await;
    tc.volume(&b, &both, raw, MIB, pb::Legality::Legal).await;
    let mut s = scheduler(&tc).await;
    let before = snapshot(&tc).await;
    let (img, unknown) = (ok.image_id.as_str(), new_id());

    // MoveDisk.
    let cases = [
        (
            "move of an unknown disk",
            move_req(&a, &unknown, &b, ""),
            (NotFound, "DISK_NOT_FOUND", "image.image_id"),
        ),
        (
            "move from an unknown domain",
            move_req(&unknown, img, &b, ""),
            (
                NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                "image.storage_domain_id",
            ),
        ),
        (
            "move to an unknown domain",
            move_req(&a, img, &unknown, ""),
            (
                NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                "destination_storage_domain_id",
            ),
        ),
        (
            "move to the disk's own domain",
            move_req(&a, img, &a, ""),
            (
                InvalidArgument,
                "SAME_STORAGE_DOMAIN",
                "destination_storage_domain_id",
            ),
        ),
        (
            "move without a disk",
            pb::MoveDiskRequest {
                image: None,
                ..move_req(&a, img, &b, "")
            },
            (InvalidArgument, "MISSING_FIELD", "image"),
        ),
        (
            "move of a malformed image id",
            move_req(&a, "../../etc", &b, ""),
            (InvalidArgument, "MALFORMED_ID", "image.image_id"),
        ),
        (
            "move from a malformed domain id",
            move_req("a", img, &b, ""),
            (InvalidArgument, "MALFORMED_ID", "image.storage_domain_id"),
        ),
        (
            "move to a malformed domain id",
            move_req(&a, img, "b", ""),
            (
                InvalidArgument,
                "MALFORMED_ID",
                "destination_storage_domain_id",
            ),
        ),
        (
            "move to no domain",
            move_req(&a, img, "", ""),
            (
                InvalidArgument,
                "MISSING_FIELD",
                "destination_storage_domain_id",
            ),
        ),
        (
            "move of an ILLEGAL disk",
            move_req(&a, &illegal.image_id, &b, ""),
            (FailedPrecondition, "DISK_ILLEGAL", "image"),
        ),
        (
            "move onto the same image in the destination",
            move_req(&a, &both, &b, ""),
            (
                AlreadyExists,
                "DISK_EXISTS",
                "destination_storage_domain_id",
            ),
        ),
    ];
    for (what, req, want) in cases {
        refused(&tc, &before, what, s.move_disk(req).await, want).await;
    }

    // CloneDisk.
    let cases = [
        (
            "clone of an unknown volume",
            clone_req(
                &pb::VolumeRef {
                    volume_id: unknown.clone(),
                    ..tpl.clone()
                },
                &b,
            ),
            (NotFound, "VOLUME_NOT_FOUND", "template_volume"),
        ),
        (
            "clone from an unknown domain",
            clone_req(
                &pb::VolumeRef {
                    storage_domain_id: unknown.clone(),
                    ..tpl.clone()
                },
                &b,
            ),
            (
                NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                "template_volume.storage_domain_id",
            ),
        ),
        (
            "clone to an unknown domain",
            clone_req(&tpl, &unknown),
            (
                NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                "destination_storage_domain_id",
            ),
        ),
        (
            "clone of a malformed volume id",
            clone_req(
                &pb::VolumeRef {
                    volume_id: "v1".into(),
                    ..tpl.clone()
                },
                &b,
            ),
            (InvalidArgument, "MALFORMED_ID", "template_volume.volume_id"),
        ),
        (
            "clone without a template",
            pb::CloneDiskRequest {
                template_volume: None,
                ..clone_req(&tpl, &b)
            },
            (InvalidArgument, "MISSING_FIELD", "template_volume"),
        ),
        (
            "clone into the template's own image",
            pb::CloneDiskRequest {
                new_image_id: tpl.image_id.clone(),
                ..clone_req(&tpl, &b)
            },
            (InvalidArgument, "INVALID_VALUE", "new_image_id"),
        ),
        (
            "clone with a malformed new volume id",
            pb::CloneDiskRequest {
                new_volume_id: "x".into(),
                ..clone_req(&tpl, &b)
            },
            (InvalidArgument, "MALFORMED_ID", "new_volume_id"),
        ),
        (
            "clone to an unknown format",
            pb::CloneDiskRequest {
                format: 99,
                ..clone_req(&tpl, &b)
            },
            (InvalidArgument, "UNKNOWN_ENUM_VALUE", "format"),
        ),
        (
            "clone onto an existing image",
            pb::CloneDiskRequest {
                new_image_id: both.clone(),
                ..clone_req(&tpl, &b)
            },
            (AlreadyExists, "DISK_EXISTS", "new_image_id"),
        ),
        (
            "clone of an ILLEGAL volume",
            clone_req(&illegal, &b),
            (FailedPrecondition, "TEMPLATE_ILLEGAL", "template_volume"),
        ),
    ];
    for (what, req, want) in cases {
        refused(&tc, &before, what, s.clone_disk(req).await, want).await;
    }

    // Operations: unknown, malformed, missing.
    let absent = format!("operations/{unknown}");
    let names = [
        (absent.as_str(), (NotFound, "OPERATION_NOT_FOUND", "name")),
        ("operations/x", (InvalidArgument, "MALFORMED_ID", "name")),
        ("flows/x", (InvalidArgument, "MALFORMED_ID", "name")),
        ("", (InvalidArgument, "MISSING_FIELD", "name")),
    ];
    for (name, want) in names {
        let get = s
            .get_operation(pb::GetOperationRequest { name: name.into() })
            .await;
        refused(&tc, &before, &format!("get {name:?}"), get, want).await;
        let watch = s
            .watch_operation(pb::WatchOperationRequest { name: name.into() })
            .await
            .map(drop);
        refused(&tc, &before, &format!("watch {name:?}"), watch, want).await;
        let cancel = s
            .cancel_operation(pb::CancelOperationRequest { name: name.into() })
            .await;
        refused(&tc, &before, &format!("cancel {name:?}"), cancel, want).await;
    }
    let list = s
        .list_operations(pb::ListOperationsRequest {
            image_id: "img".into(),
            ..Default::default()
        })
        .await;
    let want = (InvalidArgument, "MALFORMED_ID", "image_id");
    refused(&tc, &before, "list by a malformed image id", list, want).await;

    // GetDiskStatus.
    let cases = [
        (
            "status of an unknown disk",
            disk(&a, &unknown),
            (NotFound, "DISK_NOT_FOUND", "disk.image_id"),
        ),
        (
            "status in an unknown domain",
            disk(&unknown, img),
            (
                NotFound,
                "STORAGE_DOMAIN_NOT_FOUND",
                "disk.storage_domain_id",
            ),
        ),
        (
            "status of a malformed image id",
            disk(&a, "img"),
            (InvalidArgument, "MALFORMED_ID", "disk.image_id"),
        ),
        (
            "status of no disk",
            None,
            (InvalidArgument, "MISSING_FIELD", "disk"),
        ),
    ];
    for (what, d, want) in cases {
        let status = s
            .get_disk_status(pb::GetDiskStatusRequest { disk: d })
            .await;
        refused(&tc, &before, what, status, want).await;
    }

    // SetConfig and GetConfig.
    let setting = "data_operations_by_hsm";
    let cases = [
        (
            "unknown_setting",
            "true",
            (InvalidArgument, "UNKNOWN_SETTING", "key"),
        ),
        ("", "true", (InvalidArgument, "MISSING_FIELD", "key")),
        (
            setting,
            "maybe",
            (InvalidArgument, "INVALID_VALUE", "value"),
        ),
        (setting, "", (InvalidArgument, "INVALID_VALUE", "value")),
    ];
    for (key, value, want) in cases {
        let set = s
            .set_config(pb::SetConfigRequest {
                key: key.into(),
                value: value.into(),
            })
            .await;
        refused(&tc, &before, &format!("set {key:?} = {value:?}"), set, want).await;
    }
    let get = s
        .get_config(pb::GetConfigRequest {
            key: "unknown_setting".into(),
        })
        .await;
    let want = (InvalidArgument, "UNKNOWN_SETTING", "key");
    refused(&tc, &before, "get an unknown setting", get, want).await;
    let value = s
        .get_config(pb::GetConfigRequest {
            key: setting.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .value;
    assert_eq!(value, "true");
}
