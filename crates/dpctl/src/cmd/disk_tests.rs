//! `disk move|clone|status` against an in-process scheduler: what dpctl sends, and how it ends.
use clap::Parser;

use super::*;
use crate::cmd::fake_scheduler::{operation, FakeScheduler};

const SD: &str = "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01";
const IMG: &str = "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";
const SD2: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const NAME: &str = "operations/3e4f5a6b-7c8d-4e9f-a0b1-c2d3e4f5a6b7";

#[derive(Parser)]
struct Disk {
    #[command(subcommand)]
    command: DiskCommand,
}

fn disk(args: &[&str]) -> DiskCommand {
    Disk::try_parse_from(std::iter::once("disk").chain(args.iter().copied()))
        .unwrap()
        .command
}

fn fake(watch: Vec<pb::Operation>) -> FakeScheduler {
    let fake = FakeScheduler::default();
    *fake.started.lock().unwrap() = operation(NAME, 0, false, None);
    *fake.watches.lock().unwrap() = vec![watch.into_iter().map(Ok).collect()];
    fake
}

#[tokio::test]
async fn move_sends_the_disk_and_follows_it_to_success() {
    let fake = fake(vec![
        operation(NAME, 50, false, None),
        operation(NAME, 100, true, None),
    ]);
    let ctx = fake.serve(Output::Text).await;
    let upper = IMG.to_uppercase();
    disk(&["move", SD, &upper, SD2, "--request-id", SD])
        .run(&ctx)
        .await
        .unwrap();
    let moves = fake.moves.lock().unwrap().clone();
    let image = moves[0].image.clone().unwrap();
    assert_eq!(
        (image.storage_domain_id.as_str(), image.image_id.as_str()),
        (SD, IMG)
    );
    assert_eq!(moves[0].destination_storage_domain_id, SD2);
    assert_eq!(moves[0].request_id, SD);
    assert_eq!(*fake.watched.lock().unwrap(), [NAME]);
}

#[tokio::test]
async fn a_failed_move_exits_with_the_operations_error() {
    let fake = fake(vec![operation(NAME, 40, true, Some("COPY_FAILED"))]);
    let ctx = fake.serve(Output::Json).await;
    let err = disk(&["move", SD, IMG, SD2]).run(&ctx).await.unwrap_err();
    let line = crate::error::one_line(&err);
    assert!(line.contains(NAME), "{line}");
    assert!(
        line.contains("failed: COPY_FAILED: every host failed the copy"),
        "{line}"
    );
}

#[tokio::test]
async fn detach_returns_without_watching() {
    let fake = fake(vec![]);
    let ctx = fake.serve(Output::Text).await;
    disk(&["move", SD, IMG, SD2, "--detach"])
        .run(&ctx)
        .await
        .unwrap();
    assert_eq!(fake.moves.lock().unwrap().len(), 1);
    assert!(fake.watched.lock().unwrap().is_empty());
}

#[test]
fn clone_flags_become_the_request() {
    let DiskCommand::Clone(args) = disk(&[
        "clone",
        SD,
        IMG,
        SD2,
        SD2,
        "--format",
        "cow",
        "--allocation",
        "preallocated",
        "--image-id",
        IMG,
        "--request-id",
        SD,
    ]) else {
        panic!("not a clone");
    };
    let request = args.request();
    let template = request.template_volume.clone().unwrap();
    assert_eq!(template.volume_id, SD2);
    assert_eq!(request.destination_storage_domain_id, SD2);
    assert_eq!(request.format, pb::VolumeFormat::Cow as i32);
    assert_eq!(
        request.allocation,
        pb::VolumeAllocation::Preallocated as i32
    );
    assert_eq!(
        (
            request.new_image_id.as_str(),
            request.new_volume_id.as_str()
        ),
        (IMG, "")
    );
    assert_eq!(request.request_id, SD);

    let DiskCommand::Clone(args) = disk(&["clone", SD, IMG, SD2, SD2]) else {
        panic!("not a clone");
    };
    let request = args.request();
    assert_eq!(request.format, 0, "the scheduler's default");
    assert!(request.request_id.is_empty());
}

#[test]
fn disk_status_reads_as_a_line() {
    let mut response = pb::GetDiskStatusResponse {
        status: pb::DiskStatus::Ok as i32,
        ..Default::default()
    };
    assert_eq!(status_line(&response), "ok");
    response.status = pb::DiskStatus::Locked as i32;
    response.progress = 42;
    response.operation_name = NAME.into();
    assert_eq!(status_line(&response), format!("locked 42% by {NAME}"));
}
