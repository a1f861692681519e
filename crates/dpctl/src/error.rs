//! The one-line error `main` prints: the context chain joined by `: `, with a gRPC status shown as
//! `<CODE>: <message> (<ErrorInfo reason>)` instead of tonic's debug-like rendering.
use tonic::{Code, Status};

/// `err` and its causes on one line (launcher errors may append a process's log tail below it).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = match cause.downcast_ref::<Status>() {
            Some(status) => status_line(status),
            None => cause.to_string(),
        };
        // Some errors repeat their source's text in their own.
        if text.is_empty() || parts.last().is_some_and(|p| p.contains(&text)) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// `NOT_FOUND: job 1234 not found (JOB_NOT_FOUND)`.
pub fn status_line(status: &Status) -> String {
    let message = if status.message().is_empty() {
        status.code().description().to_string()
    } else {
        status.message().replace('\n', " ")
    };
    match datapath_api::error::reason(status) {
        Some(reason) => format!("{}: {message} ({reason})", code_name(status.code())),
        None => format!("{}: {message}", code_name(status.code())),
    }
}

/// The canonical name of a gRPC code, e.g. `FAILED_PRECONDITION`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn statuses_read_as_code_message_reason() {
        let status =
            datapath_api::error::status(Code::NotFound, "JOB_NOT_FOUND", "job 42 not found", None);
        let err = Err::<(), _>(status).context("get job 42").unwrap_err();
        assert_eq!(
            one_line(&err),
            "get job 42: NOT_FOUND: job 42 not found (JOB_NOT_FOUND)"
        );
        let plain = anyhow::Error::new(Status::unavailable("")).context("list hosts");
        assert_eq!(
            one_line(&plain),
            "list hosts: UNAVAILABLE: The service is currently unavailable"
        );
    }
}
