//! The display rules of one operation, fed sequences of `Operation` messages as a watch delivers them.
use datapath_api::pb::{self, JobStatus as J, OperationStep as Step};

use super::*;

const NAME: &str = "operations/0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";

/// `(volume, status, progress, host, attempts)`.
type Vol<'a> = (&'a str, J, u32, &'a str, u32);

fn op(step: Step, progress: u32, volumes: &[Vol]) -> pb::Operation {
    pb::Operation {
        name: NAME.into(),
        metadata: Some(pb::OperationMetadata {
            kind: pb::OperationKind::MoveDisk as i32,
            step: step as i32,
            progress,
            volumes: volumes
                .iter()
                .map(
                    |&(id, status, progress, host, attempts)| pb::VolumeProgress {
                        volume_id: id.into(),
                        host_id: host.into(),
                        status: status as i32,
                        progress,
                        attempts,
                        ..Default::default()
                    },
                )
                .collect(),
            ..Default::default()
        }),
        done: false,
        result: None,
    }
}

fn ended(mut op: pb::Operation, error: Option<(i32, &str, &str)>) -> pb::Operation {
    op.done = true;
    op.result = Some(match error {
        Some((code, reason, message)) => pb::operation::Result::Error(pb::OperationError {
            code,
            message: message.into(),
            reason: reason.into(),
        }),
        None => pb::operation::Result::Response(pb::DiskRef::default()),
    });
    op
}

#[test]
fn the_overall_figure_never_goes_back() {
    let mut view = OpView::new(NAME);
    let mut seen = Vec::new();
    for (step, progress) in [
        (Step::CloneStructure, 5),
        (Step::CopyData, 40),
        (Step::CopyData, 30), // a stale or re-estimated figure
        (Step::CopyData, 70),
        (Step::Rollback, 0),
    ] {
        view.apply(&op(step, progress, &[]));
        seen.push(view.overall());
    }
    assert_eq!(seen, [5, 40, 40, 70, 70]);
    assert_eq!(view.state(), "rollback");
}

#[test]
fn volumes_appear_in_order_and_keep_their_place() {
    let mut view = OpView::new(NAME);
    let changes = view.apply(&op(Step::CloneStructure, 10, &[]));
    assert_eq!(changes, [Change::Overall]);
    assert!(view.volumes().is_empty());

    let a = ("vol-a", J::Running, 20, "host-1", 1);
    let changes = view.apply(&op(Step::CopyData, 20, &[a]));
    assert_eq!(changes, [Change::Overall, Change::NewVolume(0)]);

    let a = ("vol-a", J::Running, 50, "host-1", 1);
    let b = ("vol-b", J::Pending, 0, "host-2", 1);
    // The server may list them in another order: the display keeps first-seen order.
    let changes = view.apply(&op(Step::CopyData, 20, &[b, a]));
    assert_eq!(changes, [Change::NewVolume(1), Change::Volume(0)]);
    let ids: Vec<&str> = view
        .volumes()
        .iter()
        .map(|v| v.volume_id.as_str())
        .collect();
    assert_eq!(ids, ["vol-a", "vol-b"]);
    assert_eq!(view.volumes()[0].progress, 50);

    // Nothing new: nothing to redraw.
    assert!(view.apply(&op(Step::CopyData, 20, &[b, a])).is_empty());
}

#[test]
fn a_volume_figure_restarts_only_on_a_new_attempt() {
    let mut view = OpView::new(NAME);
    view.apply(&op(Step::CopyData, 50, &[("v", J::Running, 60, "h1", 1)]));
    view.apply(&op(Step::CopyData, 50, &[("v", J::Running, 40, "h1", 1)]));
    assert_eq!(view.volumes()[0].progress, 60, "same attempt: never back");
    view.apply(&op(Step::CopyData, 50, &[("v", J::Running, 5, "h2", 2)]));
    let v = &view.volumes()[0];
    assert_eq!((v.progress, v.host_id.as_str(), v.attempts), (5, "h2", 2));
    assert_eq!(view.volume_message(0), "running on h2, try 2");
}

#[test]
fn the_final_state_reads_as_it_ended() {
    let running = op(Step::CopyData, 95, &[("v", J::Succeeded, 100, "h", 1)]);
    let mut view = OpView::new(NAME);
    view.apply(&running);
    view.apply(&ended(op(Step::Done, 99, &[]), None));
    assert_eq!((view.overall(), view.state()), (100, "succeeded"));

    let mut view = OpView::new(NAME);
    view.apply(&running);
    let failed = ended(
        op(Step::Rollback, 40, &[]),
        Some((9, "COPY_FAILED", "qemu-img exited 1")),
    );
    view.apply(&failed);
    assert_eq!((view.overall(), view.state()), (95, "failed (COPY_FAILED)"));
    assert_eq!(
        operation_failure(&failed).unwrap(),
        format!("operation {NAME} failed: COPY_FAILED: qemu-img exited 1")
    );

    let cancelled = ended(op(Step::Done, 40, &[]), Some((1, "", "")));
    assert_eq!(operation_state(&cancelled), "cancelled");
    assert_eq!(
        operation_failure(&cancelled).unwrap(),
        format!("operation {NAME} cancelled: CANCELLED")
    );
    assert_eq!(operation_failure(&ended(running.clone(), None)), None);
    assert_eq!(operation_failure(&running), None, "not done yet");
}

#[test]
fn cancelling_shows_until_the_end() {
    let mut view = OpView::new(NAME);
    let mut cancelling = op(Step::CopyData, 30, &[]);
    if let Some(m) = cancelling.metadata.as_mut() {
        m.cancel_requested = true;
    }
    assert_eq!(view.apply(&cancelling), [Change::Overall]);
    assert_eq!(view.state(), "cancelling");
    assert_eq!(operation_state(&cancelling), "cancelling");
}

#[test]
fn plain_lines_name_the_operation_and_each_volume() {
    let mut view = OpView::new(NAME);
    let mut lines = Vec::new();
    for message in [
        op(Step::CloneStructure, 10, &[]),
        op(Step::CopyData, 10, &[("v", J::Unspecified, 0, "", 0)]),
        op(Step::CopyData, 55, &[("v", J::Running, 50, "h1", 1)]),
        op(Step::CopyData, 55, &[("v", J::Running, 50, "h1", 1)]),
        ended(
            op(Step::Done, 100, &[("v", J::Succeeded, 100, "h1", 1)]),
            None,
        ),
    ] {
        let changes = view.apply(&message);
        lines.extend(view.lines(&changes));
    }
    assert_eq!(
        lines,
        [
            format!("{NAME}: clone_structure 10%"),
            format!("{NAME}: copy_data 10%"),
            format!("{NAME}: volume v 0% waiting"),
            format!("{NAME}: copy_data 55%"),
            format!("{NAME}: volume v 50% running on h1"),
            format!("{NAME}: succeeded 100%"),
            format!("{NAME}: volume v 100% succeeded on h1"),
        ]
    );
}
