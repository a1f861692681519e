//! The etcd key layout, all under one prefix (default `/datapath/`):
//!
//! | key | value | life |
//! |---|---|---|
//! | `hosts/<host_id>` | `Host` | the host's session lease |
//! | `spm/<lease>` | etcd election: host id | each candidate's session lease; the oldest key is the SPM |
//! | `scheduler/<lease>` | etcd election: scheduler address | each replica's session lease |
//! | `leases/volumes/<sd>/<img>/<vol>` | `VolumeLease` | the holder's session lease; create-if-absent |
//! | `holds/volumes/<sd>/<img>/<vol>/<job_id>` | `VolumeLease` (the reader) | the reader's session lease; while a copy reads the volume |
//! | `deleting/<sd>/<img>` | the SPM's host id (text) | the SPM's session lease; while it deletes the image |
//! | `generations/<sd>/<img>/<vol>` | generation (text) | permanent; deleted with the image |
//! | `jobs/<job_id>` | `Job` (job-tracker only) | until deleted, or the retention lease after it ended |
//! | `flows/<operation_id>` | `Flow` (scheduler leader) | until the operation ends and its retention passes |
//! | `locks/disks/<sd>/<img>` | `DiskLock` | while an operation owns or reads the disk |
//! | `requests/<request_id>` | operation name (text) | as long as its flow |
//! | `config/<name>` | text | permanent |
//!
//! Values are protobuf messages from `proto/datapath/v1`; `dpctl decode` prints them as JSON.
use datapath_api::{
    ids::{HostId, ImageId, JobId, OperationId, StorageDomainId, VolumeId},
    volume::{DiskKey, VolumeKey},
};

/// `<sd>/<img>/<vol>`, as [`VolumeKey`] displays itself.
fn parse_volume(text: &str) -> Option<VolumeKey> {
    let mut parts = text.split('/');
    let (sd, img, vol) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    Some(VolumeKey {
        storage_domain: StorageDomainId::parse("key", sd).ok()?,
        image: ImageId::parse("key", img).ok()?,
        volume: VolumeId::parse("key", vol).ok()?,
    })
}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/datapath/";

/// The kinds of record in the keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// `hosts/<host_id>`.
    Host,
    /// `leases/volumes/<sd>/<img>/<vol>`.
    VolumeLease,
    /// `jobs/<job_id>`.
    Job,
    /// `flows/<operation_id>`.
    Flow,
    /// `locks/disks/<sd>/<img>`.
    DiskLock,
    /// `config/<name>`, `requests/<id>`, election keys: plain text.
    Config,
    /// Anything else under the prefix (elections, flows of later versions).
    Other,
}

impl RecordKind {
    /// The full name of the protobuf message stored there, if it is one.
    pub fn message_name(self) -> Option<&'static str> {
        match self {
            Self::Host => Some("datapath.v1.Host"),
            Self::VolumeLease => Some("datapath.v1.VolumeLease"),
            Self::Job => Some("datapath.v1.Job"),
            Self::Flow => Some("datapath.v1.Flow"),
            Self::DiskLock => Some("datapath.v1.DiskLock"),
            Self::Config | Self::Other => None,
        }
    }
}

/// Builds and parses keys under one prefix; tests give each cluster its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (a trailing `/` is added when missing).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `hosts/`.
    pub fn hosts(&self) -> String {
        format!("{}hosts/", self.prefix)
    }

    /// `hosts/<host_id>`.
    pub fn host(&self, host: HostId) -> String {
        format!("{}{host}", self.hosts())
    }

    /// `leases/volumes/`.
    pub fn volume_leases(&self) -> String {
        format!("{}leases/volumes/", self.prefix)
    }

    /// `leases/volumes/<sd>/<img>/<vol>`.
    pub fn volume_lease(&self, volume: &VolumeKey) -> String {
        format!("{}{volume}", self.volume_leases())
    }

    /// `leases/volumes/<sd>/<img>/`: the leases of one image's volumes.
    pub fn image_leases(&self, disk: &DiskKey) -> String {
        format!("{}{disk}/", self.volume_leases())
    }

    /// `holds/volumes/`.
    pub fn volume_holds(&self) -> String {
        format!("{}holds/volumes/", self.prefix)
    }

    /// `holds/volumes/<sd>/<img>/<vol>/`: the read holds of one volume.
    pub fn holds_of(&self, volume: &VolumeKey) -> String {
        format!("{}{volume}/", self.volume_holds())
    }

    /// `holds/volumes/<sd>/<img>/<vol>/<job_id>`: job `job`'s read hold on `volume`.
    pub fn volume_hold(&self, volume: &VolumeKey, job: JobId) -> String {
        format!("{}{job}", self.holds_of(volume))
    }

    /// `holds/volumes/<sd>/<img>/`: the read holds of one image's volumes.
    pub fn image_holds(&self, disk: &DiskKey) -> String {
        format!("{}{disk}/", self.volume_holds())
    }

    /// The volume of a `holds/volumes/<sd>/<img>/<vol>/<job_id>` key.
    pub fn parse_volume_hold(&self, key: &[u8]) -> Option<VolumeKey> {
        let rest = std::str::from_utf8(key)
            .ok()?
            .strip_prefix(&self.volume_holds())?;
        let (volume, job) = rest.rsplit_once('/')?;
        JobId::parse("key", job).ok()?;
        parse_volume(volume)
    }

    /// `deleting/<sd>/<img>`: present while the SPM deletes the image.
    pub fn image_deleting(&self, disk: &DiskKey) -> String {
        format!("{}{disk}", self.deletions())
    }

    /// `generations/<sd>/<img>/<vol>`.
    pub fn generation(&self, volume: &VolumeKey) -> String {
        format!("{}generations/{volume}", self.prefix)
    }

    /// `generations/`: every generation record.
    pub fn generations(&self) -> String {
        format!("{}generations/", self.prefix)
    }

    /// The volume of a `generations/<sd>/<img>/<vol>` key.
    pub fn parse_generation(&self, key: &[u8]) -> Option<VolumeKey> {
        parse_volume(
            std::str::from_utf8(key)
                .ok()?
                .strip_prefix(&self.generations())?,
        )
    }

    /// The volume of a `leases/volumes/<sd>/<img>/<vol>` key.
    pub fn parse_volume_lease(&self, key: &[u8]) -> Option<VolumeKey> {
        parse_volume(
            std::str::from_utf8(key)
                .ok()?
                .strip_prefix(&self.volume_leases())?,
        )
    }

    /// `generations/<sd>/<img>/`: every generation record of one image.
    pub fn image_generations(&self, disk: &DiskKey) -> String {
        format!("{}generations/{disk}/", self.prefix)
    }

    /// `jobs/`.
    pub fn jobs(&self) -> String {
        format!("{}jobs/", self.prefix)
    }

    /// `jobs/<job_id>`.
    pub fn job(&self, job: JobId) -> String {
        format!("{}{job}", self.jobs())
    }

    /// The job id of a `jobs/<job_id>` key.
    pub fn parse_job(&self, key: &[u8]) -> Option<JobId> {
        let key = std::str::from_utf8(key).ok()?;
        JobId::parse("key", key.strip_prefix(&self.jobs())?).ok()
    }

    /// What kind of record `key` holds, by its place in the layout; `None` outside the prefix.
    pub fn kind_of(&self, key: &str) -> Option<RecordKind> {
        let rest = key.strip_prefix(&self.prefix)?;
        Some(match rest {
            r if r.starts_with("hosts/") => RecordKind::Host,
            r if r.starts_with("leases/volumes/") || r.starts_with("holds/volumes/") => {
                RecordKind::VolumeLease
            }
            r if r.starts_with("jobs/") => RecordKind::Job,
            r if r.starts_with("flows/") => RecordKind::Flow,
            r if r.starts_with("locks/disks/") => RecordKind::DiskLock,
            r if r.starts_with("config/")
                || r.starts_with("requests/")
                || r.starts_with("generations/")
                || r.starts_with("deleting/")
                || r.starts_with("spm/")
                || r.starts_with("scheduler/") =>
            {
                RecordKind::Config
            }
            _ => RecordKind::Other,
        })
    }

    /// Every runtime setting.
    pub fn configs(&self) -> String {
        format!("{}config/", self.prefix)
    }

    /// `config/<name>`.
    pub fn config(&self, name: &str) -> String {
        format!("{}{name}", self.configs())
    }

    /// The election of a role: `spm` or `scheduler` (etcd adds `/<lease>` per candidate).
    pub fn election(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    /// `flows/`.
    pub fn flows(&self) -> String {
        format!("{}flows/", self.prefix)
    }

    /// `flows/<operation_id>`.
    pub fn flow(&self, op: OperationId) -> String {
        format!("{}{op}", self.flows())
    }

    /// The operation id of a `flows/<operation_id>` key.
    pub fn parse_flow(&self, key: &[u8]) -> Option<OperationId> {
        let key = std::str::from_utf8(key).ok()?;
        OperationId::parse("key", key.strip_prefix(&self.flows())?).ok()
    }

    /// Every disk lock.
    pub fn disk_locks(&self) -> String {
        format!("{}locks/disks/", self.prefix)
    }

    /// Every deletion marker (an image being deleted by the SPM).
    pub fn deletions(&self) -> String {
        format!("{}deleting/", self.prefix)
    }

    /// Every request id's operation (AIP-155).
    pub fn requests(&self) -> String {
        format!("{}requests/", self.prefix)
    }

    /// `locks/disks/<sd>/<img>`.
    pub fn disk_lock(&self, disk: &DiskKey) -> String {
        format!("{}{disk}", self.disk_locks())
    }

    /// `requests/<request_id>`; the id is the caller's text, so it is hex-encoded into the key.
    pub fn request(&self, request_id: &str) -> String {
        let hex: String = request_id.bytes().map(|b| format!("{b:02x}")).collect();
        format!("{}{hex}", self.requests())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_round_trip() {
        let keys = Keys::new("/t1");
        let id = JobId::random();
        assert_eq!(keys.job(id), format!("/t1/jobs/{id}"));
        assert_eq!(keys.parse_job(keys.job(id).as_bytes()), Some(id));
        assert_eq!(keys.parse_job(b"/t1/hosts/x"), None);
    }

    #[test]
    fn volume_keys_round_trip() {
        let keys = Keys::new("/t1");
        let v = VolumeKey {
            storage_domain: StorageDomainId::random(),
            image: ImageId::random(),
            volume: VolumeId::random(),
        };
        let gen = keys.generation(&v);
        let lease = keys.volume_lease(&v);
        assert_eq!(keys.parse_generation(gen.as_bytes()), Some(v));
        assert_eq!(keys.parse_volume_lease(lease.as_bytes()), Some(v));
        assert_eq!(keys.parse_generation(lease.as_bytes()), None);
        assert_eq!(keys.parse_volume_lease(gen.as_bytes()), None);
        for bad in [
            "/t1/generations/a/b/c",
            "/t1/generations/",
            &format!("{gen}/x"),
        ] {
            assert_eq!(keys.parse_generation(bad.as_bytes()), None, "{bad}");
        }
        let hold = keys.volume_hold(&v, JobId::random());
        assert_eq!(keys.parse_volume_hold(hold.as_bytes()), Some(v));
        assert!(hold.starts_with(&keys.holds_of(&v)));
        assert!(hold.starts_with(&keys.image_holds(&v.disk())));
        assert!(lease.starts_with(&keys.image_leases(&v.disk())));
        assert_eq!(keys.parse_volume_hold(lease.as_bytes()), None);
        assert_eq!(
            keys.parse_volume_hold(format!("{}x", keys.holds_of(&v)).as_bytes()),
            None
        );
    }

    #[test]
    fn kinds_follow_the_layout() {
        let keys = Keys::new("/t1/");
        assert_eq!(
            keys.kind_of(&keys.job(JobId::random())),
            Some(RecordKind::Job)
        );
        assert_eq!(keys.kind_of("/t1/hosts/h"), Some(RecordKind::Host));
        assert_eq!(
            keys.kind_of("/t1/leases/volumes/a/b/c"),
            Some(RecordKind::VolumeLease)
        );
        assert_eq!(keys.kind_of("/t1/config/x"), Some(RecordKind::Config));
        assert_eq!(keys.kind_of("/other/jobs/x"), None);
        assert_eq!(RecordKind::Job.message_name(), Some("datapath.v1.Job"));
    }
}
