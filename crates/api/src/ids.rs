//! Identifier newtypes over UUIDs, so a volume id cannot be passed where an image id belongs. They are
//! parsed from text once at the edge; the canonical hyphenated form is the only form that reaches a
//! path or an etcd key, so an id shaped like a path (`../../etc`) can never escape its directory.
use std::{fmt, str::FromStr};

use uuid::Uuid;

use crate::error::FieldViolation;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            /// A new random id.
            pub fn random() -> Self {
                Self(Uuid::new_v4())
            }

            /// A new id that sorts after every id made before it (a UUIDv7: milliseconds since
            /// the epoch, then random bits), so that a listing in key order is in creation order.
            pub fn time_ordered() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses `text`, naming `field` in the error.
            pub fn parse(field: &str, text: &str) -> Result<Self, FieldViolation> {
                if text.is_empty() {
                    return Err(FieldViolation::missing(field));
                }
                Uuid::try_parse(text).map(Self).map_err(|_| {
                    FieldViolation::new(
                        field,
                        "MALFORMED_ID",
                        format!("{} is not a UUID", crate::error::excerpt(text)),
                    )
                })
            }

            /// The underlying UUID.
            pub fn uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = FieldViolation;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(stringify!($name), s)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

uuid_id!(
    /// A storage domain.
    StorageDomainId
);
uuid_id!(
    /// An image: a disk, the group of volumes of one chain.
    ImageId
);
uuid_id!(
    /// A volume: one layer of an image's chain.
    VolumeId
);
uuid_id!(
    /// A host job (the caller's idempotency key for CopyData).
    JobId
);
uuid_id!(
    /// A host, persisted by its host-worker across restarts.
    HostId
);
uuid_id!(
    /// A scheduler operation (a flow); its public name is `operations/<id>` (AIP-151).
    OperationId
);

impl OperationId {
    /// The resource-name prefix of an operation.
    pub const NAME_PREFIX: &'static str = "operations/";

    /// `operations/<id>`.
    pub fn name(&self) -> String {
        format!("{}{self}", Self::NAME_PREFIX)
    }

    /// Parses a name `operations/<id>` found at `field` (a bare id is accepted too).
    pub fn parse_name(field: &str, name: &str) -> Result<Self, FieldViolation> {
        Self::parse(field, name.strip_prefix(Self::NAME_PREFIX).unwrap_or(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_malformed_id_is_not_echoed_whole() {
        let long = "x".repeat(1 << 20);
        let err = VolumeId::parse("volume.volume_id", &long).unwrap_err();
        assert!(err.message.len() < 200, "{}", err.message.len());
    }

    #[test]
    fn parse_rejects_paths_and_names_the_field() {
        let err = VolumeId::parse("source.volume.volume_id", "../../etc").unwrap_err();
        assert_eq!(err.field, "source.volume.volume_id");
        assert_eq!(err.reason, "MALFORMED_ID");
        assert_eq!(
            VolumeId::parse("f", "").unwrap_err().reason,
            "MISSING_FIELD"
        );
    }

    #[test]
    fn operation_names_round_trip() {
        let id = OperationId::random();
        assert_eq!(OperationId::parse_name("name", &id.name()).unwrap(), id);
        assert_eq!(
            OperationId::parse_name("name", "operations/x")
                .unwrap_err()
                .field,
            "name"
        );
    }

    #[test]
    fn display_is_canonical() {
        let id = ImageId::parse("f", "6F9619FF-8B86-D011-B42D-00C04FC964FF").unwrap();
        assert_eq!(id.to_string(), "6f9619ff-8b86-d011-b42d-00c04fc964ff");
    }
}
