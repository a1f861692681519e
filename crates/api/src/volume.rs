//! Validated domain types for volumes and copies, converted once from the generated messages.
use std::fmt;

use crate::{
    error::FieldViolation,
    ids::{ImageId, JobId, StorageDomainId, VolumeId},
    pb,
};

/// Where a volume lives: its storage domain, image and volume ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VolumeKey {
    /// The storage domain holding the image.
    pub storage_domain: StorageDomainId,
    /// The image (disk) the volume belongs to.
    pub image: ImageId,
    /// The volume itself.
    pub volume: VolumeId,
}

impl VolumeKey {
    /// Validates a `VolumeRef` found at `field`.
    pub fn from_pb(field: &str, r: Option<&pb::VolumeRef>) -> Result<Self, FieldViolation> {
        let r = r.ok_or_else(|| FieldViolation::missing(field))?;
        Ok(Self {
            storage_domain: StorageDomainId::parse(
                &format!("{field}.storage_domain_id"),
                &r.storage_domain_id,
            )?,
            image: ImageId::parse(&format!("{field}.image_id"), &r.image_id)?,
            volume: VolumeId::parse(&format!("{field}.volume_id"), &r.volume_id)?,
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::VolumeRef {
        pb::VolumeRef {
            storage_domain_id: self.storage_domain.to_string(),
            image_id: self.image.to_string(),
            volume_id: self.volume.to_string(),
        }
    }
}

/// A disk: one image in one storage domain (the scheduler's unit of locking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DiskKey {
    /// The storage domain holding the image.
    pub storage_domain: StorageDomainId,
    /// The image.
    pub image: ImageId,
}

impl DiskKey {
    /// Validates a `DiskRef` found at `field`.
    pub fn from_pb(field: &str, r: Option<&pb::DiskRef>) -> Result<Self, FieldViolation> {
        let r = r.ok_or_else(|| FieldViolation::missing(field))?;
        Ok(Self {
            storage_domain: StorageDomainId::parse(
                &format!("{field}.storage_domain_id"),
                &r.storage_domain_id,
            )?,
            image: ImageId::parse(&format!("{field}.image_id"), &r.image_id)?,
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::DiskRef {
        pb::DiskRef {
            storage_domain_id: self.storage_domain.to_string(),
            image_id: self.image.to_string(),
        }
    }

    /// One volume of this disk.
    pub fn volume(&self, volume: VolumeId) -> VolumeKey {
        VolumeKey {
            storage_domain: self.storage_domain,
            image: self.image,
            volume,
        }
    }
}

/// `<sd>/<img>`.
impl fmt::Display for DiskKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.storage_domain, self.image)
    }
}

impl VolumeKey {
    /// The disk the volume belongs to.
    pub fn disk(&self) -> DiskKey {
        DiskKey {
            storage_domain: self.storage_domain,
            image: self.image,
        }
    }
}

/// `<sd>/<img>/<vol>`: the entity name used by the job index and lease keys.
impl fmt::Display for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.storage_domain, self.image, self.volume)
    }
}

macro_rules! domain_enum {
    ($(#[$doc:meta])* $name:ident, $pb:ident, $($variant:ident = $pbv:ident / $text:literal),+ $(,)?) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $(
                #[doc = $text]
                $variant,
            )+
        }

        impl $name {
            /// Validates a wire value at `field`; UNSPECIFIED and unknown values are errors.
            pub fn from_pb(field: &str, value: i32) -> Result<Self, FieldViolation> {
                match pb::$pb::try_from(value) {
                    $(Ok(pb::$pb::$pbv) => Ok(Self::$variant),)+
                    Ok(_) => Err(FieldViolation::missing(field)),
                    Err(_) => Err(FieldViolation::new(
                        field,
                        "UNKNOWN_ENUM_VALUE",
                        format!("{value} is not a known {}", stringify!($pb)),
                    )),
                }
            }

            /// Like `from_pb`, but UNSPECIFIED means `default`.
            pub fn from_pb_or(field: &str, value: i32, default: Self) -> Result<Self, FieldViolation> {
                if value == 0 {
                    Ok(default)
                } else {
                    Self::from_pb(field, value)
                }
            }

            /// The wire value.
            pub fn to_pb(self) -> pb::$pb {
                match self {
                    $(Self::$variant => pb::$pb::$pbv,)+
                }
            }

            /// The name stored in volume metadata files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// Parses the name stored in volume metadata files.
            pub fn parse_str(text: &str) -> Option<Self> {
                match text {
                    $($text => Some(Self::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

domain_enum!(
    /// A volume's disk format.
    Format, VolumeFormat,
    Raw = Raw / "RAW",
    Cow = Cow / "COW",
);
domain_enum!(
    /// How a volume's space is allocated.
    Allocation, VolumeAllocation,
    Sparse = Sparse / "SPARSE",
    Preallocated = Preallocated / "PREALLOCATED",
);
domain_enum!(
    /// A volume's place in its chain.
    Role, VolumeRole,
    Shared = Shared / "SHARED",
    Leaf = Leaf / "LEAF",
    Internal = Internal / "INTERNAL",
);
domain_enum!(
    /// Whether a volume's data can be trusted.
    Legality, Legality,
    Legal = Legal / "LEGAL",
    Illegal = Illegal / "ILLEGAL",
);

impl Format {
    /// qemu-img's name for the format.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Cow => "qcow2",
        }
    }
}

/// One end of a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyEndpoint {
    /// The volume.
    pub volume: VolumeKey,
    /// The generation the caller expects the volume to have.
    pub generation: Option<u64>,
}

impl CopyEndpoint {
    fn from_pb(field: &str, e: Option<&pb::CopyDataEndpoint>) -> Result<Self, FieldViolation> {
        let e = e.ok_or_else(|| FieldViolation::missing(field))?;
        Ok(Self {
            volume: VolumeKey::from_pb(&format!("{field}.volume"), e.volume.as_ref())?,
            generation: e.generation,
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::CopyDataEndpoint {
        pb::CopyDataEndpoint {
            volume: Some(self.volume.to_pb()),
            generation: self.generation,
        }
    }
}

/// A validated `CopyDataRequest`: ids parsed, source and destination distinct volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyDataSpec {
    /// The caller's job id.
    pub job_id: JobId,
    /// Where the data comes from.
    pub source: CopyEndpoint,
    /// Where it goes.
    pub destination: CopyEndpoint,
}

impl CopyDataSpec {
    /// Validates the request's shape (existence on storage is checked by the host).
    pub fn from_pb(req: &pb::CopyDataRequest) -> Result<Self, FieldViolation> {
        let job_id = JobId::parse("job_id", &req.job_id)?;
        let source = CopyEndpoint::from_pb("source", req.source.as_ref())?;
        let destination = CopyEndpoint::from_pb("destination", req.destination.as_ref())?;
        if source.volume == destination.volume {
            return Err(FieldViolation::new(
                "destination.volume",
                "SAME_VOLUME",
                "source and destination are the same volume",
            ));
        }
        Ok(Self {
            job_id,
            source,
            destination,
        })
    }

    /// The job parameters recorded with the job.
    pub fn params(&self) -> pb::CopyDataParams {
        pb::CopyDataParams {
            source: Some(self.source.to_pb()),
            destination: Some(self.destination.to_pb()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vref(sd: &str, img: &str, vol: &str) -> pb::VolumeRef {
        pb::VolumeRef {
            storage_domain_id: sd.into(),
            image_id: img.into(),
            volume_id: vol.into(),
        }
    }

    #[test]
    fn unknown_enum_value_names_the_field() {
        let err = Format::from_pb("format", 42).unwrap_err();
        assert_eq!(
            (err.field.as_str(), err.reason),
            ("format", "UNKNOWN_ENUM_VALUE")
        );
        assert_eq!(
            Format::from_pb("format", 0).unwrap_err().reason,
            "MISSING_FIELD"
        );
        assert_eq!(Format::from_pb("format", 2).unwrap(), Format::Cow);
    }

    #[test]
    fn copy_spec_rejects_same_volume_and_bad_ids() {
        let id = uuid::Uuid::new_v4().to_string();
        let ep = |r| pb::CopyDataEndpoint {
            volume: Some(r),
            generation: None,
        };
        let mut req = pb::CopyDataRequest {
            job_id: id.clone(),
            source: Some(ep(vref(&id, &id, &id))),
            destination: Some(ep(vref(&id, &id, &id))),
        };
        assert_eq!(
            CopyDataSpec::from_pb(&req).unwrap_err().reason,
            "SAME_VOLUME"
        );
        req.destination = Some(ep(vref(&id, "../../etc", &id)));
        let err = CopyDataSpec::from_pb(&req).unwrap_err();
        assert_eq!(err.field, "destination.volume.image_id");
    }
}
