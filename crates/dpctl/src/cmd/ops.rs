//! `dpctl ops list|get|watch|cancel`: the scheduler's long-running disk operations, named
//! `operations/<uuid>` (a bare uuid is accepted and completed).
use anyhow::Context as _;
use clap::Subcommand;
use datapath_api::{ids::OperationId, pb};

use super::{
    all_pages,
    op_follow::run_to_end,
    op_view::{error_text, operation_state},
    Context, PAGE_SIZE,
};
use crate::{
    output::{self, Output},
    parse::image_id_arg,
};

/// A clap value parser for an operation name: `operations/<uuid>` or a bare uuid, answered in the
/// canonical `operations/<uuid>` form the scheduler expects.
pub fn operation_name_arg(text: &str) -> Result<String, String> {
    OperationId::parse_name("operation name", text.trim())
        .map(|id| id.name())
        .map_err(|_| {
            format!("invalid operation name {text:?}: expected operations/<uuid> or a UUID")
        })
}

/// Operation commands.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// List operations in the order they were started (all pages).
    List {
        /// Only the operations on this image.
        #[arg(long, env = "DATAPATH_OPS_IMAGE_ID", value_parser = image_id_arg)]
        image_id: Option<String>,
        /// Only the operations that are done (true) or not yet (false).
        #[arg(long, env = "DATAPATH_OPS_DONE")]
        done: Option<bool>,
    },
    /// Show one operation and its volumes.
    Get {
        /// operations/<uuid>, or the uuid.
        #[arg(value_parser = operation_name_arg)]
        name: String,
    },
    /// Follow an operation to its end with progress; exits non-zero when it did not succeed.
    Watch {
        /// operations/<uuid>, or the uuid.
        #[arg(value_parser = operation_name_arg)]
        name: String,
    },
    /// Cancel an operation: it rolls back and ends with CANCELLED.
    Cancel {
        /// operations/<uuid>, or the uuid.
        #[arg(value_parser = operation_name_arg)]
        name: String,
    },
}

impl OpsCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let mut scheduler = ctx.scheduler().await?;
        match self {
            Self::List { image_id, done } => {
                let request = pb::ListOperationsRequest {
                    image_id: image_id.unwrap_or_default(),
                    done,
                    page_size: PAGE_SIZE,
                    page_token: String::new(),
                };
                let operations = all_pages(|page_token| {
                    let mut scheduler = scheduler.clone();
                    let request = pb::ListOperationsRequest {
                        page_token,
                        ..request.clone()
                    };
                    async move {
                        let page = scheduler
                            .list_operations(request)
                            .await
                            .context("list operations")?
                            .into_inner();
                        Ok((page.operations, page.next_page_token))
                    }
                })
                .await?;
                let all = pb::ListOperationsResponse {
                    operations,
                    next_page_token: String::new(),
                };
                match ctx.output() {
                    Output::Json => output::print_json(&all)?,
                    Output::Text => println!("{}", operations_table(&all.operations)),
                }
            }
            Self::Get { name } => {
                let response = scheduler
                    .get_operation(pb::GetOperationRequest { name: name.clone() })
                    .await
                    .with_context(|| format!("get {name}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => {
                        println!("{}", describe(&response.operation.unwrap_or_default()))
                    }
                }
            }
            Self::Watch { name } => {
                run_to_end(&mut scheduler, &name, ctx.output(), true).await?;
            }
            Self::Cancel { name } => {
                let response = scheduler
                    .cancel_operation(pb::CancelOperationRequest { name: name.clone() })
                    .await
                    .with_context(|| format!("cancel {name}"))?
                    .into_inner();
                match ctx.output() {
                    Output::Json => output::print_json(&response)?,
                    Output::Text => {
                        let op = response.operation.unwrap_or_default();
                        println!("cancel requested: {name} is {}", operation_state(&op));
                    }
                }
            }
        }
        Ok(())
    }
}

/// `<sd>/<img>`, or `-`.
pub fn disk_text(disk: Option<&pb::DiskRef>) -> String {
    match disk {
        Some(d) if !d.storage_domain_id.is_empty() || !d.image_id.is_empty() => {
            format!("{}/{}", d.storage_domain_id, d.image_id)
        }
        _ => "-".to_string(),
    }
}

fn error_cell(op: &pb::Operation) -> String {
    match &op.result {
        Some(pb::operation::Result::Error(e)) => error_text(e),
        _ => "-".to_string(),
    }
}

/// The table of `dpctl ops list`.
pub fn operations_table(operations: &[pb::Operation]) -> String {
    let rows: Vec<Vec<String>> = operations
        .iter()
        .map(|op| {
            let meta = op.metadata.clone().unwrap_or_default();
            vec![
                op.name.clone(),
                output::operation_kind(meta.kind),
                operation_state(op),
                output::operation_step(meta.step),
                format!("{}%", meta.progress),
                disk_text(meta.disk.as_ref()),
                error_cell(op),
            ]
        })
        .collect();
    let headers = ["NAME", "KIND", "STATE", "STEP", "PROGRESS", "DISK", "ERROR"];
    output::table(&headers, &rows)
}

/// `dpctl ops get`: one `key value` line per field, then the volumes as a table.
pub fn describe(op: &pb::Operation) -> String {
    let meta = op.metadata.clone().unwrap_or_default();
    let result = match &op.result {
        Some(pb::operation::Result::Response(disk)) => disk_text(Some(disk)),
        _ => "-".to_string(),
    };
    let lines = [
        ("name", op.name.clone()),
        ("kind", output::operation_kind(meta.kind)),
        ("state", operation_state(op)),
        ("step", output::operation_step(meta.step)),
        ("progress", format!("{}%", meta.progress)),
        ("disk", disk_text(meta.disk.as_ref())),
        ("error", error_cell(op)),
        ("result", result),
        ("created", output::timestamp(meta.created_at.as_ref())),
        ("updated", output::timestamp(meta.updated_at.as_ref())),
        ("trace", output::or_dash(&meta.trace_id).to_string()),
    ];
    let mut text: Vec<String> = lines
        .iter()
        .map(|(key, value)| format!("{key:<12}{value}"))
        .collect();
    if !meta.volumes.is_empty() {
        let rows: Vec<Vec<String>> = meta.volumes.iter().map(volume_row).collect();
        let headers = [
            "VOLUME_ID",
            "STATUS",
            "PROGRESS",
            "SIZE",
            "HOST_ID",
            "TRIES",
            "JOB_ID",
        ];
        text.push(String::new());
        text.push(output::table(&headers, &rows));
    }
    text.join("\n")
}

fn volume_row(v: &pb::VolumeProgress) -> Vec<String> {
    vec![
        v.volume_id.clone(),
        output::job_status(v.status),
        format!("{}%", v.progress),
        output::bytes(v.size_bytes),
        output::or_dash(&v.host_id).to_string(),
        match v.transient_retries {
            0 => v.attempts.to_string(),
            n => format!("{} (+{n} transient)", v.attempts),
        },
        output::or_dash(&v.job_id).to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::fake_scheduler::{operation, FakeScheduler};

    const ID: &str = "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";

    #[test]
    fn tries_count_attempts_and_show_transient_retries_apart() {
        let mut v = pb::VolumeProgress {
            attempts: 2,
            ..Default::default()
        };
        assert_eq!(volume_row(&v)[5], "2");
        v.transient_retries = 3;
        assert_eq!(volume_row(&v)[5], "2 (+3 transient)");
    }

    #[test]
    fn names_and_bare_ids_become_canonical_names() {
        let name = format!("operations/{ID}");
        assert_eq!(operation_name_arg(ID).unwrap(), name);
        assert_eq!(
            operation_name_arg(&name.to_uppercase().replace("OPERATIONS", "operations")).unwrap(),
            name
        );
        assert!(operation_name_arg("operations/x").is_err());
        assert!(operation_name_arg(&format!("jobs/{ID}")).is_err());
    }

    #[tokio::test]
    async fn list_fetches_every_page_with_the_filters() {
        let fake = FakeScheduler::default();
        *fake.pages.lock().unwrap() = vec![
            vec![operation("operations/a", 10, false, None)],
            vec![operation("operations/b", 100, true, Some("COPY_FAILED"))],
        ];
        let ctx = fake.serve(Output::Json).await;
        OpsCommand::List {
            image_id: Some(ID.into()),
            done: Some(false),
        }
        .run(&ctx)
        .await
        .unwrap();
        let lists = fake.lists.lock().unwrap().clone();
        let tokens: Vec<&str> = lists.iter().map(|r| r.page_token.as_str()).collect();
        assert_eq!(tokens, ["", "1"]);
        assert!(lists
            .iter()
            .all(|r| r.done == Some(false) && r.image_id == ID));
    }

    #[test]
    fn the_table_shows_state_and_error() {
        let table = operations_table(&[operation("operations/b", 40, true, Some("COPY_FAILED"))]);
        let row = table.lines().nth(1).unwrap();
        for cell in [
            "operations/b",
            "move_disk",
            "failed",
            "copy_data",
            "40%",
            "COPY_FAILED: every host",
        ] {
            assert!(row.contains(cell), "{cell:?} not in {row:?}");
        }
    }
}
