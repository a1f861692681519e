//! Volume metadata files: `KEY=VALUE` lines, like VDSM's, readable with `cat`.
use std::collections::BTreeMap;

use datapath_api::volume::{Allocation, Format, Legality, Role};
use datapath_api::{ids::VolumeId, pb};

/// A volume's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    /// Disk format of the data file.
    pub format: Format,
    /// Sparse or preallocated.
    pub allocation: Allocation,
    /// Virtual size in bytes.
    pub capacity: u64,
    /// The backing volume in the same image.
    pub parent: Option<VolumeId>,
    /// Place in the chain.
    pub role: Role,
    /// Whether the data can be trusted.
    pub legality: Legality,
    /// Raised on every successful copy into the volume.
    pub generation: u64,
    /// Free text.
    pub description: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

impl VolumeMeta {
    /// The file's text.
    pub fn render(&self) -> String {
        let parent = self.parent.map(|p| p.to_string()).unwrap_or_default();
        let description = self.description.replace(['\n', '\r'], " ");
        format!(
            "FORMAT={}\nTYPE={}\nCAP={}\nPUUID={}\nVOLTYPE={}\nLEGALITY={}\nGEN={}\nCTIME={}\nDESCRIPTION={}\n",
            self.format.as_str(),
            self.allocation.as_str(),
            self.capacity,
            parent,
            self.role.as_str(),
            self.legality.as_str(),
            self.generation,
            self.created,
            description,
        )
    }

    /// Parses the file's text; `None` names the first bad key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let map: BTreeMap<&str, &str> = text.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| map.get(k).copied().ok_or_else(|| format!("missing {k}"));
        let bad = |k: &str| format!("bad {k}");
        Ok(Self {
            format: Format::parse_str(get("FORMAT")?).ok_or_else(|| bad("FORMAT"))?,
            allocation: Allocation::parse_str(get("TYPE")?).ok_or_else(|| bad("TYPE"))?,
            capacity: get("CAP")?.parse().map_err(|_| bad("CAP"))?,
            parent: match get("PUUID")? {
                "" => None,
                p => Some(VolumeId::parse("PUUID", p).map_err(|_| bad("PUUID"))?),
            },
            role: Role::parse_str(get("VOLTYPE")?).ok_or_else(|| bad("VOLTYPE"))?,
            legality: Legality::parse_str(get("LEGALITY")?).ok_or_else(|| bad("LEGALITY"))?,
            generation: get("GEN")?.parse().map_err(|_| bad("GEN"))?,
            created: get("CTIME")?.parse().map_err(|_| bad("CTIME"))?,
            // A bare CR (a hand edit) reads as the space render() writes for it, so a parsed value
            // survives the next rewrite unchanged (found by the `volume_metadata` fuzz target).
            description: map
                .get("DESCRIPTION")
                .copied()
                .unwrap_or("")
                .replace('\r', " "),
        })
    }

    /// The wire form.
    pub fn to_pb(&self) -> pb::VolumeMetadata {
        pb::VolumeMetadata {
            format: self.format.to_pb() as i32,
            allocation: self.allocation.to_pb() as i32,
            capacity_bytes: self.capacity,
            parent_volume_id: self.parent.map(|p| p.to_string()).unwrap_or_default(),
            role: self.role.to_pb() as i32,
            legality: self.legality.to_pb() as i32,
            generation: self.generation,
            description: self.description.clone(),
            created_at: Some(prost_types::Timestamp {
                seconds: self.created,
                nanos: 0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let meta = VolumeMeta {
            format: Format::Cow,
            allocation: Allocation::Sparse,
            capacity: 1 << 30,
            parent: Some(VolumeId::random()),
            role: Role::Leaf,
            legality: Legality::Illegal,
            generation: 7,
            description: "a\nb".into(),
            created: 1_700_000_000,
        };
        let parsed = VolumeMeta::parse(&meta.render()).unwrap();
        assert_eq!(parsed.description, "a b");
        assert_eq!(
            VolumeMeta {
                description: "a b".into(),
                ..meta
            },
            parsed
        );
        assert!(VolumeMeta::parse("FORMAT=XYZ\n").is_err());
    }

    #[test]
    fn a_bare_carriage_return_survives_a_rewrite() {
        // The `volume_metadata` fuzz target's finding, kept as a case.
        let text = "FORMAT=RAW\nTYPE=SPARSE\nCAP=0\nPUUID=\nVOLTYPE=LEAF\nLEGALITY=LEGAL\nGEN=0\nCTIME=0\nDESCRIPTION=a\rb\n";
        let parsed = VolumeMeta::parse(text).unwrap();
        assert_eq!(VolumeMeta::parse(&parsed.render()).unwrap(), parsed);
    }
}
