//! Parsing of the CLI's own value syntaxes: volume paths (`SD/IMG/VOL`), UUIDs and sizes (`1G`,
//! `256M`, `1073741824`). Errors are one line naming what was expected; ids come out canonical.
use std::{fmt, str::FromStr};

use datapath_api::pb;
use uuid::Uuid;

/// A UUID in canonical hyphenated form, from any form `uuid` accepts.
pub fn parse_uuid(what: &str, text: &str) -> Result<String, String> {
    Uuid::try_parse(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| format!("invalid {what} {text:?}: expected a UUID"))
}

/// A clap value parser for a UUID argument.
pub fn uuid_arg(text: &str) -> Result<String, String> {
    parse_uuid("id", text)
}

/// A clap value parser for a storage domain id.
pub fn sd_id_arg(text: &str) -> Result<String, String> {
    parse_uuid("storage domain id", text)
}

/// A clap value parser for an image id.
pub fn image_id_arg(text: &str) -> Result<String, String> {
    parse_uuid("image id", text)
}

/// A clap value parser for a volume id.
pub fn volume_id_arg(text: &str) -> Result<String, String> {
    parse_uuid("volume id", text)
}

/// A volume named as `<storage-domain-id>/<image-id>/<volume-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumePath {
    /// The storage domain id.
    pub storage_domain_id: String,
    /// The image id.
    pub image_id: String,
    /// The volume id.
    pub volume_id: String,
}

impl VolumePath {
    /// Builds a path from its three ids, each checked.
    pub fn from_parts(sd: &str, img: &str, vol: &str) -> Result<Self, String> {
        Ok(Self {
            storage_domain_id: parse_uuid("storage domain id", sd)?,
            image_id: parse_uuid("image id", img)?,
            volume_id: parse_uuid("volume id", vol)?,
        })
    }

    /// The API's reference to it.
    pub fn to_ref(&self) -> pb::VolumeRef {
        pb::VolumeRef {
            storage_domain_id: self.storage_domain_id.clone(),
            image_id: self.image_id.clone(),
            volume_id: self.volume_id.clone(),
        }
    }
}

impl FromStr for VolumePath {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [sd, img, vol] => Self::from_parts(sd, img, vol),
            _ => Err(format!(
                "invalid volume {s:?}: expected <storage-domain-id>/<image-id>/<volume-id>"
            )),
        }
    }
}

impl fmt::Display for VolumePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.storage_domain_id, self.image_id, self.volume_id
        )
    }
}

/// A size in bytes: a plain number, or one with a binary suffix K, M, G, T or P (powers of 1024,
/// as qemu-img reads them), optionally followed by `i`, `iB` or `B`, in any case.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let err = || {
        format!(
            "invalid size {text:?}: expected bytes, or a number with K, M, G, T or P (powers of 1024)"
        )
    };
    let t = text.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, suffix) = t.split_at(digits_end);
    let number: u64 = number.parse().map_err(|_| err())?;
    let suffix = suffix.trim().to_ascii_lowercase();
    let unit = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('i'))
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(err()),
    };
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SD: &str = "6f1c6a4e-9d0b-4c4e-9a52-0d5f5b0f6a01";
    const IMG: &str = "0b9b1c2e-1d2f-4a3b-8c4d-5e6f7a8b9c0d";
    const VOL: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";

    #[test]
    fn volume_paths_parse_and_print() {
        let path: VolumePath = format!("{SD}/{IMG}/{VOL}").parse().unwrap();
        assert_eq!(path.storage_domain_id, SD);
        assert_eq!(path.image_id, IMG);
        assert_eq!(path.volume_id, VOL);
        assert_eq!(path.to_string(), format!("{SD}/{IMG}/{VOL}"));
        let upper: VolumePath = format!("{SD}/{IMG}/{VOL}").to_uppercase().parse().unwrap();
        assert_eq!(upper, path, "ids are canonicalized");
    }

    #[test]
    fn bad_volume_paths_are_rejected() {
        for bad in [
            "",
            SD,
            &format!("{SD}/{IMG}"),
            &format!("{SD}/{IMG}/{VOL}/x"),
            &format!("{SD}/../{VOL}"),
            &format!("{SD}/{IMG}/not-a-uuid"),
        ] {
            let err = bad.parse::<VolumePath>().unwrap_err();
            assert!(err.starts_with("invalid"), "{bad:?}: {err}");
        }
        let err = format!("{SD}/{IMG}/nope")
            .parse::<VolumePath>()
            .unwrap_err();
        assert!(err.contains("volume id"), "{err}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("64Ki"), Ok(64 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_sizes_are_rejected() {
        for bad in ["", "G", "1.5G", "-1", "1X", "1 G B", "99999999999P", "1GG"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }
}
