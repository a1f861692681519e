//! Error statuses in the AIP-193 shape: every status carries a `google.rpc.ErrorInfo` with a stable
//! UPPER_SNAKE_CASE reason in the `datapath.io` domain, and a field violation when one field is at fault.
use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every datapath error.
pub const ERROR_DOMAIN: &str = "datapath.io";

/// Builds a status whose details carry an `ErrorInfo` with `reason`, and with `field` in its metadata and
/// a `BadRequest` violation when a field is named.
pub fn status(code: Code, reason: &str, message: impl Into<String>, field: Option<&str>) -> Status {
    let mut message = message.into();
    if let Some(field) = field.filter(|f| !message.contains(*f)) {
        message = format!("{field}: {message}");
    }
    let mut metadata = HashMap::new();
    if let Some(field) = field {
        metadata.insert("field".to_string(), field.to_string());
    }
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    if let (Some(field), Code::InvalidArgument) = (field, code) {
        details.add_bad_request_violation(field, message.clone());
    }
    Status::with_error_details(code, message, details)
}

/// A status whose `ErrorInfo` carries `reason` and extra `metadata`, for errors that tell the caller
/// where to go instead (NOT_SPM names the current SPM's host id and address).
pub fn status_with_metadata(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: &[(&str, String)],
) -> Status {
    let metadata: HashMap<String, String> = metadata
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    let details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata);
    Status::with_error_details(code, message, details)
}

/// One `ErrorInfo` metadata value a status carries.
pub fn metadata(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// The `ErrorInfo.reason` a status carries, if any.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// The field an error names (its `ErrorInfo` metadata `field`), if any.
pub fn field(status: &Status) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get("field").cloned())
}

/// One bad field of an incoming message; becomes `INVALID_ARGUMENT` naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldViolation {
    /// The field path, e.g. `destination.volume.volume_id`.
    pub field: String,
    /// A stable reason such as `MALFORMED_ID`, `MISSING_FIELD`, `UNKNOWN_ENUM_VALUE`, `INVALID_VALUE`.
    pub reason: &'static str,
    /// The whole human message, naming the field.
    pub message: String,
}

impl FieldViolation {
    /// A violation of `field` with `reason`; the message reads "invalid <field>: <what>".
    pub fn new(field: impl Into<String>, reason: &'static str, what: impl AsRef<str>) -> Self {
        let field = field.into();
        let message = format!("invalid {field}: {}", what.as_ref());
        Self {
            field,
            reason,
            message,
        }
    }

    /// A required field that is empty or absent.
    pub fn missing(field: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field} is required");
        Self {
            field,
            reason: "MISSING_FIELD",
            message,
        }
    }
}

impl From<FieldViolation> for Status {
    fn from(v: FieldViolation) -> Self {
        status(Code::InvalidArgument, v.reason, v.message, Some(&v.field))
    }
}

/// `text` quoted for an error message, cut to its first 40 characters: a caller's input is named,
/// never echoed whole (it may be megabytes).
pub fn excerpt(text: &str) -> String {
    const KEEP: usize = 40;
    match text.char_indices().nth(KEEP) {
        None => format!("{text:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &text[..cut], text.len()),
    }
}
