//! What a caller may send, in one place. Every limit is checked where a request enters a service and
//! refused with `INVALID_ARGUMENT` naming the field (a reason from this module), before anything
//! changes on disk or in etcd. The table of limits is in README.md, "Limits".
use crate::error::FieldViolation;

/// Names a person gives (a storage domain's): at most this many bytes.
pub const NAME_MAX_BYTES: usize = 256;
/// Free-text descriptions (a volume's, a job's): at most this many bytes.
pub const DESCRIPTION_MAX_BYTES: usize = 1024;
/// The default largest volume a host-worker creates (`--max-volume-capacity`): 16 TiB.
pub const DEFAULT_MAX_VOLUME_CAPACITY: u64 = 16 << 40;

fn at_most(field: &str, value: &str, max: usize) -> Result<(), FieldViolation> {
    if value.len() > max {
        return Err(FieldViolation::new(
            field,
            "TOO_LONG",
            format!("is {} bytes; at most {max} are allowed", value.len()),
        ));
    }
    Ok(())
}

/// A name: at most [`NAME_MAX_BYTES`], no control characters (it goes into a metadata file).
pub fn name(field: &str, value: &str) -> Result<(), FieldViolation> {
    at_most(field, value, NAME_MAX_BYTES)?;
    if value.chars().any(char::is_control) {
        return Err(FieldViolation::new(
            field,
            "INVALID_VALUE",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A description: at most [`DESCRIPTION_MAX_BYTES`].
pub fn description(field: &str, value: &str) -> Result<(), FieldViolation> {
    at_most(field, value, DESCRIPTION_MAX_BYTES)
}

/// An idempotency key (AIP-155): empty, or a UUID.
pub fn request_id(field: &str, value: &str) -> Result<(), FieldViolation> {
    if value.is_empty() || uuid::Uuid::try_parse(value).is_ok() {
        return Ok(());
    }
    Err(FieldViolation::new(
        field,
        "MALFORMED_ID",
        format!(
            "{} is not a UUID (request ids are UUIDs, AIP-155)",
            crate::error::excerpt(value)
        ),
    ))
}

/// A volume capacity: at most `max` bytes.
pub fn capacity(field: &str, value: u64, max: u64) -> Result<(), FieldViolation> {
    if value > max {
        return Err(FieldViolation::new(
            field,
            "CAPACITY_TOO_LARGE",
            format!("{value} bytes is above this host's limit of {max} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_takes_the_edge_and_refuses_one_past_it() {
        assert!(name("name", &"n".repeat(NAME_MAX_BYTES)).is_ok());
        let e = name("name", &"n".repeat(NAME_MAX_BYTES + 1)).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason), ("name", "TOO_LONG"));
        assert!(name("name", "a\nb").is_err());
        assert!(description("d", &"d".repeat(DESCRIPTION_MAX_BYTES)).is_ok());
        assert!(description("d", &"d".repeat(DESCRIPTION_MAX_BYTES + 1)).is_err());
        assert!(request_id("request_id", "").is_ok());
        assert!(request_id("request_id", &uuid::Uuid::new_v4().to_string()).is_ok());
        let e = request_id("request_id", &"r".repeat(4 << 20)).unwrap_err();
        assert!(e.message.len() < 200);
        assert!(capacity("capacity_bytes", 16 << 40, DEFAULT_MAX_VOLUME_CAPACITY).is_ok());
        let e = capacity(
            "capacity_bytes",
            (16 << 40) + 1,
            DEFAULT_MAX_VOLUME_CAPACITY,
        )
        .unwrap_err();
        assert_eq!(e.reason, "CAPACITY_TOO_LARGE");
    }
}
