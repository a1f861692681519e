//! What the progress display of one scheduler operation shows, computed from the `Operation` messages a
//! watch delivers, kept apart from any terminal so its rules are unit-tested:
//! - the overall figure never goes back (a stale message or a rolled-back estimate cannot make the
//!   bar jump left), and a succeeded operation reads 100 %;
//! - volumes get an entry the first time they appear, in that order, and keep it;
//! - a volume's figure only goes back when a new copy attempt starts (a retry on another host).
//!
//! Also the operation's one-word state and the one-line error of an operation that did not succeed.
use datapath_api::pb;

use crate::{error::code_name, output};

/// google.rpc.Code CANCELLED: an operation that was cancelled ends with this error code.
const CODE_CANCELLED: i32 = 1;

/// One volume's entry in the display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeView {
    /// The volume being copied.
    pub volume_id: String,
    /// 0 to 100 within the current attempt.
    pub progress: u32,
    /// The current copy job's status.
    pub status: i32,
    /// The host running the current attempt; empty before one is chosen.
    pub host_id: String,
    /// Copy attempts so far.
    pub attempts: u32,
}

/// What changed in the view after one message, so renderers redraw (or print) only that.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The overall figure, step or state changed.
    Overall,
    /// Volume `i` appeared.
    NewVolume(usize),
    /// Volume `i` changed.
    Volume(usize),
}

/// The display state of one operation.
#[derive(Debug, Clone, Default)]
pub struct OpView {
    name: String,
    overall: u32,
    state: String,
    volumes: Vec<VolumeView>,
}

impl OpView {
    /// An empty view of operation `name`.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            ..Self::default()
        }
    }

    /// The operation's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The overall figure, 0 to 100.
    pub fn overall(&self) -> u32 {
        self.overall
    }

    /// The overall label: the step while it runs (`copy_data`, `cancelling`), else how it ended
    /// (`succeeded`, `failed (NO_HOST)`).
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The volumes, in the order they appeared.
    pub fn volumes(&self) -> &[VolumeView] {
        &self.volumes
    }

    /// Takes in one message and says what changed.
    pub fn apply(&mut self, op: &pb::Operation) -> Vec<Change> {
        let meta = op.metadata.clone().unwrap_or_default();
        let mut changes = Vec::new();
        let succeeded = operation_state(op) == "succeeded";
        let overall = if succeeded {
            100
        } else {
            meta.progress.min(100)
        };
        let state = if op.done {
            ended_label(op)
        } else if meta.cancel_requested {
            "cancelling".to_string()
        } else {
            output::operation_step(meta.step)
        };
        if overall > self.overall || state != self.state {
            self.overall = self.overall.max(overall);
            self.state = state;
            changes.push(Change::Overall);
        }
        for v in &meta.volumes {
            changes.extend(self.apply_volume(v));
        }
        changes
    }

    fn apply_volume(&mut self, v: &pb::VolumeProgress) -> Option<Change> {
        let Some(i) = self.volumes.iter().position(|e| e.volume_id == v.volume_id) else {
            self.volumes.push(VolumeView {
                volume_id: v.volume_id.clone(),
                progress: v.progress.min(100),
                status: v.status,
                host_id: v.host_id.clone(),
                attempts: v.attempts,
            });
            return Some(Change::NewVolume(self.volumes.len() - 1));
        };
        let entry = &mut self.volumes[i];
        let retried = v.attempts > entry.attempts;
        let progress = if retried {
            v.progress.min(100)
        } else {
            entry.progress.max(v.progress.min(100))
        };
        let next = VolumeView {
            volume_id: entry.volume_id.clone(),
            progress,
            status: v.status,
            host_id: v.host_id.clone(),
            attempts: entry.attempts.max(v.attempts),
        };
        if next == *entry {
            return None;
        }
        *entry = next;
        Some(Change::Volume(i))
    }

    /// Volume `i`'s label: `running on 6f1c6a4e…, try 2`.
    pub fn volume_message(&self, i: usize) -> String {
        let Some(v) = self.volumes.get(i) else {
            return String::new();
        };
        let status = if v.status == 0 {
            "waiting".to_string()
        } else {
            output::job_status(v.status)
        };
        let host = if v.host_id.is_empty() {
            String::new()
        } else {
            format!(" on {}", v.host_id)
        };
        let attempt = if v.attempts > 1 {
            format!(", try {}", v.attempts)
        } else {
            String::new()
        };
        format!("{status}{host}{attempt}")
    }

    /// The plain lines for `changes`, as printed when stderr is not a terminal.
    pub fn lines(&self, changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|change| match *change {
                Change::Overall => {
                    format!("{}: {} {}%", self.name, self.state, self.overall)
                }
                Change::NewVolume(i) | Change::Volume(i) => {
                    let v = &self.volumes[i];
                    format!(
                        "{}: volume {} {}% {}",
                        self.name,
                        v.volume_id,
                        v.progress,
                        self.volume_message(i)
                    )
                }
            })
            .collect()
    }
}

/// An operation's state in one word: `running`, `cancelling`, `succeeded`, `failed` or `cancelled`.
pub fn operation_state(op: &pb::Operation) -> String {
    let cancel_requested = op.metadata.as_ref().is_some_and(|m| m.cancel_requested);
    match (&op.result, op.done) {
        (_, false) if cancel_requested => "cancelling",
        (_, false) => "running",
        (Some(pb::operation::Result::Error(e)), true) if e.code == CODE_CANCELLED => "cancelled",
        (Some(pb::operation::Result::Error(_)), true) => "failed",
        (_, true) => "succeeded",
    }
    .to_string()
}

/// How an operation ended, with its error's reason: `succeeded`, `failed (NO_HOST)`.
fn ended_label(op: &pb::Operation) -> String {
    let state = operation_state(op);
    match &op.result {
        Some(pb::operation::Result::Error(e)) if !e.reason.is_empty() => {
            format!("{state} ({})", e.reason)
        }
        _ => state,
    }
}

/// `REASON: message` of an operation's error (the code's name when it has no reason).
pub fn error_text(e: &pb::OperationError) -> String {
    let reason = if e.reason.is_empty() {
        code_name(tonic::Code::from_i32(e.code)).to_string()
    } else {
        e.reason.clone()
    };
    if e.message.is_empty() {
        reason
    } else {
        format!("{reason}: {}", e.message.replace('\n', " "))
    }
}

/// The one-line error of an operation that ended without succeeding; `None` when it succeeded or is
/// still running.
pub fn operation_failure(op: &pb::Operation) -> Option<String> {
    match (&op.result, op.done) {
        (Some(pb::operation::Result::Error(e)), true) => Some(format!(
            "operation {} {}: {}",
            op.name,
            operation_state(op),
            error_text(e)
        )),
        _ => None,
    }
}

#[cfg(test)]
#[path = "op_view_tests.rs"]
mod tests;
