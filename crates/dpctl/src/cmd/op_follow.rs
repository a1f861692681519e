//! Following one scheduler operation to its end through `WatchOperation`, re-opening the stream when
//! it breaks or closes early (a scheduler restart, a new scheduler leader), with progress on stderr:
//! on a terminal an indicatif `MultiProgress` — one overall bar, then one bar per volume as volumes
//! appear — else a plain line each time the overall figure, the step or a volume changes (indicatif
//! draws nothing off a terminal, and CI logs need the lines). The rules of what is shown live in
//! [`op_view`](super::op_view); this file only moves messages to the screen.
use std::{io::IsTerminal as _, time::Duration};

use anyhow::anyhow;
use datapath_api::pb;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tonic::Code;

use super::op_view::{operation_failure, Change, OpView};
use crate::{
    client::SchedulerClient,
    error::status_line,
    output::{self, Output},
};

/// Consecutive broken streams tolerated without a message in between.
const MAX_RETRIES: u32 = 10;
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// How a follow shows the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars or plain lines on stderr.
    Progress,
    /// Every `WatchOperationResponse` as one line of proto3 JSON on stdout, nothing on stderr.
    JsonLines,
    /// Nothing (tests).
    Quiet,
}

/// Follows operation `name` until it is done and returns it as it ended, whether it succeeded or not.
pub async fn follow(
    client: &mut SchedulerClient,
    name: &str,
    mode: Mode,
) -> anyhow::Result<pb::Operation> {
    let mut display = Display::new(name, mode);
    let mut retries = 0;
    loop {
        let request = pb::WatchOperationRequest {
            name: name.to_string(),
        };
        let broken = match client.watch_operation(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            retries = 0;
                            if let Some(op) = display.show(&message)? {
                                return Ok(op);
                            }
                        }
                        Ok(None) => {
                            break anyhow!(
                                "the scheduler closed the watch before the operation was done"
                            )
                        }
                        Err(status) => break watch_error(status, &mut display)?,
                    }
                }
            }
            Err(status) => watch_error(status, &mut display)?,
        };
        retries += 1;
        if retries > MAX_RETRIES {
            display.finish();
            return Err(broken.context(format!("watch {name}")));
        }
        tracing::debug!("watch of {name} broke ({broken:#}); re-opening it");
        tokio::time::sleep(RETRY_DELAY * retries).await;
    }
}

/// A retryable watch error as the error to report if retries run out; others fail at once.
fn watch_error(status: tonic::Status, display: &mut Display) -> anyhow::Result<anyhow::Error> {
    match status.code() {
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::Internal
        | Code::ResourceExhausted => Ok(anyhow!(status_line(&status))),
        _ => {
            display.finish();
            Err(anyhow!(status_line(&status)).context("watch operation"))
        }
    }
}

/// Where progress goes.
struct Display {
    mode: Mode,
    view: OpView,
    bars: Option<Bars>,
}

impl Display {
    fn new(name: &str, mode: Mode) -> Self {
        let bars = (mode == Mode::Progress && std::io::stderr().is_terminal())
            .then(|| Bars::new(ProgressDrawTarget::stderr(), name));
        Self {
            mode,
            view: OpView::new(name),
            bars,
        }
    }

    /// Shows one message; the operation when it is done.
    fn show(
        &mut self,
        message: &pb::WatchOperationResponse,
    ) -> anyhow::Result<Option<pb::Operation>> {
        if self.mode == Mode::JsonLines {
            output::print_json_line(message)?;
        }
        let Some(op) = &message.operation else {
            return Ok(None);
        };
        let changes = self.view.apply(op);
        match (&mut self.bars, self.mode) {
            (Some(bars), _) => bars.render(&self.view, &changes),
            (None, Mode::Progress) => {
                for line in self.view.lines(&changes) {
                    eprintln!("{line}");
                }
            }
            _ => {}
        }
        if op.done {
            self.finish();
            return Ok(Some(op.clone()));
        }
        Ok(None)
    }

    fn finish(&mut self) {
        if let Some(bars) = self.bars.take() {
            bars.finish();
        }
    }
}

/// The bars of one operation: the overall bar first, then one per volume in order of appearance.
pub struct Bars {
    multi: MultiProgress,
    overall: ProgressBar,
    volumes: Vec<ProgressBar>,
}

impl Bars {
    /// Bars drawn to `target` (stderr, or hidden in tests).
    pub fn new(target: ProgressDrawTarget, name: &str) -> Self {
        let multi = MultiProgress::with_draw_target(target);
        let overall = multi.add(bar(name.to_string()));
        Self {
            multi,
            overall,
            volumes: Vec::new(),
        }
    }

    /// Redraws what `changes` touched.
    pub fn render(&mut self, view: &OpView, changes: &[Change]) {
        for change in changes {
            match *change {
                Change::Overall => {
                    self.overall.set_position(u64::from(view.overall()));
                    self.overall.set_message(view.state().to_string());
                }
                Change::NewVolume(i) | Change::Volume(i) => {
                    let Some(v) = view.volumes().get(i) else {
                        continue;
                    };
                    while self.volumes.len() <= i {
                        let prefix = format!("  volume {}", v.volume_id);
                        self.volumes.push(self.multi.add(bar(prefix)));
                    }
                    self.volumes[i].set_position(u64::from(v.progress));
                    self.volumes[i].set_message(view.volume_message(i));
                }
            }
        }
    }

    /// Leaves every bar on screen as it is: the last state is the answer.
    pub fn finish(&self) {
        self.overall.finish();
        for bar in &self.volumes {
            bar.finish();
        }
    }

    /// The overall bar.
    pub fn overall(&self) -> &ProgressBar {
        &self.overall
    }

    /// The volume bars, in order of appearance.
    pub fn volumes(&self) -> &[ProgressBar] {
        &self.volumes
    }
}

/// One percent bar labelled `prefix`.
fn bar(prefix: String) -> ProgressBar {
    let style = ProgressStyle::with_template("{prefix:47} [{bar:30}] {pos:>3}% {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = ProgressBar::new(100).with_style(style);
    bar.set_prefix(prefix);
    bar
}

/// Follows `name` to its end as the CLI's commands do: progress on stderr; with `-o json`, on stdout
/// either every watch message (`stream_json`) or the operation as it ended; then an error naming the
/// reason and message when it did not succeed, so the command exits non-zero.
pub async fn run_to_end(
    client: &mut SchedulerClient,
    name: &str,
    format: Output,
    stream_json: bool,
) -> anyhow::Result<pb::Operation> {
    let mode = match format {
        Output::Json if stream_json => Mode::JsonLines,
        _ => Mode::Progress,
    };
    let op = follow(client, name, mode).await?;
    if format == Output::Json && !stream_json {
        output::print_json_line(&op)?;
    }
    match operation_failure(&op) {
        Some(failure) => Err(anyhow!(failure)),
        None => Ok(op),
    }
}

#[cfg(test)]
#[path = "op_follow_tests.rs"]
mod tests;
