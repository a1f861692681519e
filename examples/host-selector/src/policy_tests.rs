//! The policy's rules, one table row per case.
use datapath_api::pb;

use super::*;

/// Host ids in ascending order: `id(1) < id(2) < …`.
fn id(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000000{n:02x}")
}

/// `(host, job_slots, running_jobs, bytes_in_flight)`.
fn request(hosts: &[(u8, u32, u32, u64)]) -> pb::SelectHostRequest {
    pb::SelectHostRequest {
        candidates: hosts
            .iter()
            .map(|&(n, job_slots, running_jobs, bytes_in_flight)| pb::Host {
                host_id: id(n),
                job_slots,
                running_jobs,
                bytes_in_flight,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn host(n: u8) -> HostId {
    HostId::parse("test", &id(n)).unwrap()
}

#[test]
fn the_policy_chooses_as_documented() {
    struct Case {
        name: &'static str,
        hosts: &'static [(u8, u32, u32, u64)],
        prefer: &'static [u8],
        want: u8,
    }
    let cases = [
        Case {
            name: "most free slots wins",
            hosts: &[(1, 4, 3, 0), (2, 4, 1, 0), (3, 2, 0, 0)],
            prefer: &[],
            want: 2,
        },
        Case {
            name: "equal slots: fewest bytes in flight",
            hosts: &[(1, 4, 2, 900), (2, 4, 2, 100), (3, 4, 2, 500)],
            prefer: &[],
            want: 2,
        },
        Case {
            name: "equal load: smallest host id, whatever the order",
            hosts: &[(3, 2, 0, 7), (1, 2, 0, 7), (2, 2, 0, 7)],
            prefer: &[],
            want: 1,
        },
        Case {
            name: "more running jobs than slots counts as none free",
            hosts: &[(1, 2, 5, 0), (2, 1, 1, 0)],
            prefer: &[],
            want: 1,
        },
        Case {
            name: "a preferred candidate wins over load",
            hosts: &[(1, 8, 0, 0), (2, 4, 3, 999)],
            prefer: &[2],
            want: 2,
        },
        Case {
            name: "the first preferred host that is a candidate",
            hosts: &[(1, 8, 0, 0), (2, 4, 0, 0), (3, 4, 0, 0)],
            prefer: &[9, 3, 2],
            want: 3,
        },
        Case {
            name: "no preferred candidate: back to load",
            hosts: &[(1, 8, 1, 0), (2, 4, 0, 0)],
            prefer: &[9],
            want: 1,
        },
    ];
    for case in cases {
        let prefer: Vec<HostId> = case.prefer.iter().map(|&n| host(n)).collect();
        let got = select(&request(case.hosts), &prefer);
        assert_eq!(got, Ok(host(case.want)), "{}", case.name);
    }
}

#[test]
fn no_candidates_is_a_failed_precondition() {
    let err = select(&request(&[]), &[host(1)]).unwrap_err();
    assert_eq!(err, SelectError::NoCandidates);
    let status = tonic::Status::from(err);
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        datapath_api::error::reason(&status).as_deref(),
        Some("NO_CANDIDATES")
    );
}

#[test]
fn malformed_input_names_the_field() {
    let mut bad_id = request(&[(1, 1, 0, 0), (2, 1, 0, 0)]);
    bad_id.candidates[1].host_id = "../host".into();
    let mut missing_id = request(&[(1, 1, 0, 0)]);
    missing_id.candidates[0].host_id.clear();
    let repeated = request(&[(1, 1, 0, 0), (2, 1, 0, 0), (1, 2, 0, 0)]);
    let mut bad_spm = request(&[(1, 1, 0, 0)]);
    bad_spm.spm_host_id = "spm".into();
    for (request, field, reason) in [
        (bad_id, "candidates[1].host_id", "MALFORMED_ID"),
        (missing_id, "candidates[0].host_id", "MISSING_FIELD"),
        (repeated, "candidates[2].host_id", "DUPLICATE_ID"),
        (bad_spm, "spm_host_id", "MALFORMED_ID"),
    ] {
        let status = tonic::Status::from(select(&request, &[]).unwrap_err());
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
        assert_eq!(datapath_api::error::field(&status).as_deref(), Some(field));
        assert_eq!(
            datapath_api::error::reason(&status).as_deref(),
            Some(reason)
        );
        assert!(status.message().contains(field), "{}", status.message());
    }
}
