//! `follow` against an in-process scheduler whose watch streams break or close early, and the bars
//! driven by a sequence of operations (drawn to a hidden target).
use datapath_api::pb::{self, JobStatus as J};
use tonic::Status;

use super::*;
use crate::cmd::fake_scheduler::{operation, FakeScheduler};

const NAME: &str = "operations/0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";

#[tokio::test]
async fn a_broken_or_closed_watch_is_reopened_until_the_end() {
    let fake = FakeScheduler::default();
    *fake.watches.lock().unwrap() = vec![
        vec![
            Ok(operation(NAME, 10, false, None)),
            Err(Status::unavailable("leader changed")),
        ],
        // Closes without the end: re-opened as well.
        vec![Ok(operation(NAME, 40, false, None))],
        vec![
            Ok(operation(NAME, 70, false, None)),
            Ok(operation(NAME, 100, true, None)),
        ],
    ];
    let ctx = fake.serve(Output::Text).await;
    let mut client = ctx.scheduler().await.unwrap();
    let op = follow(&mut client, NAME, Mode::Quiet).await.unwrap();
    assert!(op.done);
    assert_eq!(op.metadata.unwrap().progress, 100);
    assert_eq!(*fake.watched.lock().unwrap(), [NAME, NAME, NAME]);
}

#[tokio::test]
async fn an_unknown_operation_fails_at_once() {
    let fake = FakeScheduler::default();
    *fake.watches.lock().unwrap() = vec![vec![Err(Status::not_found("no such operation"))]];
    let ctx = fake.serve(Output::Text).await;
    let mut client = ctx.scheduler().await.unwrap();
    let err = follow(&mut client, NAME, Mode::Quiet).await.unwrap_err();
    assert!(format!("{err:#}").contains("NOT_FOUND"), "{err:#}");
    assert_eq!(fake.watched.lock().unwrap().len(), 1, "not retried");
}

#[tokio::test]
async fn a_failed_operation_ends_in_an_error_naming_its_reason() {
    let fake = FakeScheduler::default();
    *fake.watches.lock().unwrap() = vec![vec![
        Ok(operation(NAME, 50, false, None)),
        Ok(operation(NAME, 50, true, Some("NO_HOST_LEFT"))),
    ]];
    let ctx = fake.serve(Output::Text).await;
    let mut client = ctx.scheduler().await.unwrap();
    let err = run_to_end(&mut client, NAME, Output::Text, false)
        .await
        .unwrap_err();
    assert_eq!(
        crate::error::one_line(&err),
        format!("operation {NAME} failed: NO_HOST_LEFT: every host failed the copy")
    );
}

fn with_volumes(mut op: pb::Operation, volumes: &[(&str, J, u32)]) -> pb::Operation {
    if let Some(meta) = op.metadata.as_mut() {
        meta.volumes = volumes
            .iter()
            .map(|&(id, status, progress)| pb::VolumeProgress {
                volume_id: id.into(),
                status: status as i32,
                progress,
                host_id: "h1".into(),
                attempts: 1,
                ..Default::default()
            })
            .collect();
    }
    op
}

#[test]
fn bars_grow_per_volume_and_the_overall_bar_never_goes_back() {
    let mut bars = Bars::new(ProgressDrawTarget::hidden(), NAME);
    let mut view = OpView::new(NAME);
    let mut overall = Vec::new();
    let mut counts = Vec::new();
    for op in [
        operation(NAME, 10, false, None),
        with_volumes(operation(NAME, 30, false, None), &[("a", J::Running, 25)]),
        with_volumes(
            operation(NAME, 20, false, None),
            &[("a", J::Running, 60), ("b", J::Pending, 0)],
        ),
        with_volumes(
            operation(NAME, 100, true, None),
            &[("a", J::Succeeded, 100), ("b", J::Succeeded, 100)],
        ),
    ] {
        let changes = view.apply(&op);
        bars.render(&view, &changes);
        overall.push(bars.overall().position());
        counts.push(bars.volumes().len());
    }
    assert_eq!(overall, [10, 30, 30, 100]);
    assert_eq!(counts, [0, 1, 2, 2]);
    assert_eq!(bars.overall().message(), "succeeded");
    assert_eq!(bars.volumes()[0].prefix(), "  volume a");
    assert_eq!(bars.volumes()[1].position(), 100);
    assert_eq!(bars.volumes()[1].message(), "succeeded on h1");
    bars.finish();
    assert!(bars.overall().is_finished());
    assert!(bars.volumes().iter().all(ProgressBar::is_finished));
}
