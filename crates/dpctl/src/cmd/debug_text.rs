//! The text form of `dpctl debug etcd`: one titled section per part of the layout, tables where the
//! records are flat, and each flow as its decoded record (proto3 JSON), since a flow is what someone
//! debugging a stuck move needs in full. Leases print in hex, as `etcdctl lease list` does.
use std::fmt::Write as _;

use datapath_api::pb;
use datapath_coord::snapshot::{Entry, Snapshot};

use crate::output::{self, table};

/// The whole snapshot as text.
pub fn render(s: &Snapshot) -> anyhow::Result<String> {
    let mut out = String::new();
    let lease = |id: i64| lease_text(s, id);
    let _ = writeln!(
        out,
        "etcd state under {} at revision {}",
        s.prefix, s.revision
    );

    let spm = s.spm_host().unwrap_or_default();
    section(&mut out, "HOSTS", s.hosts.len());
    let rows: Vec<Vec<String>> = s
        .hosts
        .iter()
        .map(|e| {
            let h = &e.value;
            vec![
                e.name.clone(),
                if e.name == spm { "spm" } else { "hsm" }.to_string(),
                h.address.clone(),
                format!("{}/{}", h.running_jobs, h.job_slots),
                output::bytes(h.bytes_in_flight),
                output::or_dash(&h.storage_domain_ids.join(",")).to_string(),
                lease(e.lease),
                output::timestamp(h.registered_at.as_ref()),
            ]
        })
        .collect();
    let headers = [
        "HOST_ID",
        "ROLE",
        "ADDRESS",
        "JOBS",
        "IN_FLIGHT",
        "DOMAINS",
        "LEASE(TTL)",
        "REGISTERED",
    ];
    table_or_none(&mut out, &headers, &rows);

    let _ = writeln!(out, "\nELECTIONS");
    for (role, candidates) in [("spm", &s.spm), ("scheduler", &s.schedulers)] {
        match candidates.split_first() {
            Some((leader, standbys)) => {
                let _ = write!(
                    out,
                    "{role:<10} {}  lease {}",
                    leader.value,
                    lease(leader.lease)
                );
                let standbys: Vec<&str> = standbys.iter().map(|c| c.value.as_str()).collect();
                if !standbys.is_empty() {
                    let _ = write!(out, "  standbys: {}", standbys.join(", "));
                }
                out.push('\n');
            }
            None => {
                let _ = writeln!(out, "{role:<10} (no leader)");
            }
        }
    }

    section(&mut out, "VOLUME LEASES", s.volume_leases.len());
    let rows: Vec<Vec<String>> = s
        .volume_leases
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.value.host_id.clone(),
                e.value.job_id.clone(),
                e.value.revision.to_string(),
                lease(e.lease),
            ]
        })
        .collect();
    table_or_none(
        &mut out,
        &["VOLUME", "HOLDER", "JOB_ID", "FENCING_TOKEN", "LEASE(TTL)"],
        &rows,
    );

    section(&mut out, "READ HOLDS", s.volume_holds.len());
    let rows: Vec<Vec<String>> = s
        .volume_holds
        .iter()
        .map(|e| {
            // `<sd>/<img>/<vol>/<job_id>`: the volume is the name without its last part.
            let volume = e.name.rsplit_once('/').map_or(e.name.as_str(), |(v, _)| v);
            vec![
                volume.to_string(),
                e.value.host_id.clone(),
                e.value.job_id.clone(),
                lease(e.lease),
            ]
        })
        .collect();
    table_or_none(
        &mut out,
        &["VOLUME", "READER", "JOB_ID", "LEASE(TTL)"],
        &rows,
    );
    if !s.image_deletions.is_empty() {
        section(&mut out, "IMAGES BEING DELETED", s.image_deletions.len());
        let rows: Vec<Vec<String>> = s
            .image_deletions
            .iter()
            .map(|e| vec![e.name.clone(), e.value.clone(), lease(e.lease)])
            .collect();
        table_or_none(&mut out, &["IMAGE", "SPM", "LEASE(TTL)"], &rows);
    }

    section(&mut out, "JOBS", s.jobs.len());
    let rows: Vec<Vec<String>> = s.jobs.iter().map(|e| job_row(e, &lease)).collect();
    table_or_none(
        &mut out,
        &[
            "JOB_ID",
            "HOST_ID",
            "STATUS",
            "PROGRESS",
            "SIZE",
            "ERROR",
            "ENTITIES",
            "RETENTION",
        ],
        &rows,
    );

    section(&mut out, "FLOWS", s.flows.len());
    if s.flows.is_empty() {
        out.push_str("(none)\n");
    }
    for e in &s.flows {
        let _ = write!(out, "{}", flow_summary(e));
        match e.lease {
            0 => out.push('\n'),
            id => {
                let _ = writeln!(out, "  retention lease {}", lease(id));
            }
        }
        let json = serde_json::to_string_pretty(&output::to_json(&e.value)?)?;
        for line in json.lines() {
            let _ = writeln!(out, "  {line}");
        }
    }

    section(&mut out, "DISK LOCKS", s.disk_locks.len());
    let rows: Vec<Vec<String>> = s
        .disk_locks
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                output::or_dash(&e.value.owner).to_string(),
                output::or_dash(&e.value.readers.join(",")).to_string(),
                e.value.deleting.to_string(),
            ]
        })
        .collect();
    table_or_none(&mut out, &["DISK", "OWNER", "READERS", "DELETING"], &rows);

    section(&mut out, "GENERATIONS", s.generations.len());
    let rows: Vec<Vec<String>> = s
        .generations
        .iter()
        .map(|e| vec![e.name.clone(), e.value.to_string()])
        .collect();
    table_or_none(&mut out, &["VOLUME", "GENERATION"], &rows);

    section(&mut out, "REQUESTS", s.requests.len());
    let rows: Vec<Vec<String>> = s
        .requests
        .iter()
        .map(|e| vec![e.name.clone(), e.value.clone(), lease(e.lease)])
        .collect();
    table_or_none(&mut out, &["REQUEST(HEX)", "OPERATION", "RETENTION"], &rows);

    section(&mut out, "CONFIG", s.config.len());
    let rows: Vec<Vec<String>> = s
        .config
        .iter()
        .map(|e| vec![e.name.clone(), e.value.clone()])
        .collect();
    table_or_none(&mut out, &["NAME", "VALUE"], &rows);

    if !s.other.is_empty() || !s.unreadable.is_empty() {
        section(&mut out, "OTHER KEYS", s.other.len() + s.unreadable.len());
        for e in &s.other {
            let _ = writeln!(out, "{} = {:?}", e.name, e.value);
        }
        for u in &s.unreadable {
            let _ = writeln!(out, "{}: unreadable: {}", u.key, u.error);
        }
    }
    Ok(out)
}

fn section(out: &mut String, title: &str, count: usize) {
    let _ = writeln!(out, "\n{title} ({count})");
}

fn table_or_none(out: &mut String, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        out.push_str("(none)\n");
    } else {
        let _ = writeln!(out, "{}", table(headers, rows));
    }
}

/// `694d7f2a1b3c4d5e (3s/4s)`: the lease in hex with seconds left of its TTL; `-` for none.
fn lease_text(s: &Snapshot, id: i64) -> String {
    if id == 0 {
        return "-".to_string();
    }
    match s.leases.get(&id) {
        Some(t) => match t.left {
            Some(left) => format!("{id:x} ({left}s/{}s)", t.granted),
            None => format!("{id:x} (expired)"),
        },
        None => format!("{id:x}"),
    }
}

fn job_row(e: &Entry<pb::Job>, lease: &dyn Fn(i64) -> String) -> Vec<String> {
    let j = &e.value;
    let error = j
        .error
        .as_ref()
        .map(|e| format!("{}: {}", e.code, e.message))
        .unwrap_or_default();
    vec![
        e.name.clone(),
        j.host_id.clone(),
        output::job_status(j.status),
        format!("{}%", j.progress),
        output::bytes(j.size_bytes),
        output::or_dash(&error).to_string(),
        output::or_dash(&j.entities.join(",")).to_string(),
        lease(e.lease),
    ]
}

/// `operations/<id>  move_disk  step copy_data  40%  running` with its mod revision.
fn flow_summary(e: &Entry<pb::Flow>) -> String {
    let op = e.value.operation.clone().unwrap_or_default();
    let meta = op.metadata.unwrap_or_default();
    let state = match (&op.done, &op.result) {
        (false, _) => "running".to_string(),
        (true, Some(pb::operation::Result::Error(err))) => format!("failed: {}", err.message),
        (true, _) => "done".to_string(),
    };
    format!(
        "{}  {}  step {}  {}%  {}  (revision {})",
        output::or_dash(&op.name),
        output::operation_kind(meta.kind),
        output::operation_step(meta.step),
        meta.progress,
        state,
        e.mod_revision
    )
}
