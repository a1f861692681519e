//! The gRPC face of the host: converts requests into domain types, calls storage or the copy
//! protocol, maps errors once (see `error.rs`). Structural verbs (CreateVolume, DeleteImage) are the
//! SPM's alone (see `spm.rs`); they validate the request first, then check the role, and only then
//! touch storage, so a refused call changes nothing.
use std::sync::Arc;

use datapath_api::{
    error::FieldViolation,
    ids::{ImageId, JobId, StorageDomainId, VolumeId},
    limits,
    page::PageRequest,
    pb::{self, host_worker_service_server::HostWorkerService},
    volume::{Allocation, Format, Legality, Role, VolumeKey},
};
use datapath_coord::{volume_holds::Busy, volume_reads::Wanted};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::{
    copy,
    error::Error,
    jobs::StopReason,
    spm,
    storage::volume::NewVolume,
    worker::{VolumeAsk, Worker},
};

/// The HostWorkerService implementation.
pub struct HostWorkerApi {
    worker: Arc<Worker>,
}

impl HostWorkerApi {
    /// Serves `worker`.
    pub fn new(worker: Arc<Worker>) -> Self {
        Self { worker }
    }

    /// A volume as readers must see it: a generation recorded in etcd above the metadata's (a commit
    /// or a fence whose metadata write was lost) counts, and such a volume is not LEGAL.
    async fn volume_info(&self, key: &VolumeKey, field: &str) -> Result<pb::VolumeInfo, Error> {
        let mut infos = self.volume_infos(std::slice::from_ref(key), field).await?;
        Ok(infos.remove(0))
    }

    /// [`Self::volume_info`] of each of `keys`, their etcd records read in one transaction.
    async fn volume_infos(
        &self,
        keys: &[VolumeKey],
        field: &str,
    ) -> Result<Vec<pb::VolumeInfo>, Error> {
        let metas = keys
            .iter()
            .map(|key| self.worker.storage.read_meta(key, field))
            .collect::<Result<Vec<_>, _>>()?;
        let asks: Vec<VolumeAsk> = keys
            .iter()
            .zip(&metas)
            .map(|(key, meta)| VolumeAsk {
                volume: *key,
                on_file: meta.generation,
                wanted: Wanted {
                    generation: true,
                    lease: true,
                    holds: false,
                },
            })
            .collect();
        let seen = self.worker.volume_records(&asks).await?;
        Ok(keys
            .iter()
            .zip(metas)
            .zip(seen)
            .map(|((key, mut meta), seen)| {
                if let Some(recorded) = seen.generation_above {
                    meta.generation = recorded;
                    meta.legality = datapath_api::volume::Legality::Illegal;
                }
                pb::VolumeInfo {
                    volume: Some(key.to_pb()),
                    metadata: Some(meta.to_pb()),
                    lease: seen.lease,
                    allocated_bytes: self.worker.storage.allocated_bytes(key),
                }
            })
            .collect())
    }
}

fn new_volume(
    req: &pb::CreateVolumeRequest,
    max_capacity: u64,
) -> Result<NewVolume, FieldViolation> {
    let volume = VolumeKey::from_pb("volume", req.volume.as_ref())?;
    limits::description("description", &req.description)?;
    limits::capacity("capacity_bytes", req.capacity_bytes, max_capacity)?;
    let format = Format::from_pb("format", req.format)?;
    let parent = match req.parent_volume_id.as_str() {
        "" => None,
        p => Some(VolumeId::parse("parent_volume_id", p)?),
    };
    if parent == Some(volume.volume) {
        return Err(FieldViolation::new(
            "parent_volume_id",
            "INVALID_VALUE",
            "a volume cannot be its own parent",
        ));
    }
    if parent.is_some() && format != Format::Cow {
        return Err(FieldViolation::new(
            "format",
            "INVALID_VALUE",
            "a volume with a parent must be COW (qcow2)",
        ));
    }
    if req.capacity_bytes == 0 && parent.is_none() {
        return Err(FieldViolation::missing("capacity_bytes"));
    }
    if !req.capacity_bytes.is_multiple_of(512) {
        return Err(FieldViolation::new(
            "capacity_bytes",
            "INVALID_VALUE",
            "must be a multiple of 512",
        ));
    }
    Ok(NewVolume {
        volume,
        format,
        allocation: Allocation::from_pb_or("allocation", req.allocation, Allocation::Sparse)?,
        capacity: req.capacity_bytes,
        parent,
        role: Role::from_pb_or("role", req.role, Role::Leaf)?,
        legality: Legality::from_pb_or("legality", req.legality, Legality::Legal)?,
        description: req.description.clone(),
    })
}

#[tonic::async_trait]
impl HostWorkerService for HostWorkerApi {
    async fn create_storage_domain(
        &self,
        req: Request<pb::CreateStorageDomainRequest>,
    ) -> Result<Response<pb::CreateStorageDomainResponse>, Status> {
        let req = req.into_inner();
        let sd = StorageDomainId::parse("storage_domain_id", &req.storage_domain_id)?;
        limits::name("name", &req.name)?;
        let domain = self.worker.storage.create_domain(sd, &req.name)?;
        info!(%sd, "storage domain created");
        self.worker.jobs.changed.notify_waiters();
        Ok(Response::new(pb::CreateStorageDomainResponse {
            storage_domain: Some(domain),
        }))
    }

    async fn list_storage_domains(
        &self,
        _req: Request<pb::ListStorageDomainsRequest>,
    ) -> Result<Response<pb::ListStorageDomainsResponse>, Status> {
        let storage_domains = self.worker.storage.domains()?;
        Ok(Response::new(pb::ListStorageDomainsResponse {
            storage_domains,
        }))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let new = new_volume(req.get_ref(), self.worker.max_volume_capacity)?;
        spm::require(&self.worker).await?;
        self.worker.storage.create_volume(&new).await?;
        info!(volume = %new.volume, format = ?new.format, capacity = new.capacity, "volume created");
        let volume = self.volume_info(&new.volume, "volume").await?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(volume),
        }))
    }

    async fn get_volume_info(
        &self,
        req: Request<pb::GetVolumeInfoRequest>,
    ) -> Result<Response<pb::GetVolumeInfoResponse>, Status> {
        let key = VolumeKey::from_pb("volume", req.get_ref().volume.as_ref())?;
        let volume = self.volume_info(&key, "volume").await?;
        Ok(Response::new(pb::GetVolumeInfoResponse {
            volume: Some(volume),
        }))
    }

    async fn list_images(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let req = req.into_inner();
        let sd = StorageDomainId::parse("storage_domain_id", &req.storage_domain_id)?;
        let page = PageRequest::parse(req.page_size, &req.page_token)?;
        // The page is cut from the directory listing; only its images' metadata is read.
        let storage = &self.worker.storage;
        let (ids, next_page_token) = page.paginate(storage.image_ids(sd)?, |i| i.to_string());
        let images = ids
            .into_iter()
            .map(|img| {
                Ok(pb::Image {
                    image_id: img.to_string(),
                    volume_ids: storage
                        .image_volume_ids(sd, img)?
                        .iter()
                        .map(|v| v.to_string())
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>, crate::error::Error>>()?;
        Ok(Response::new(pb::ListImagesResponse {
            images,
            next_page_token,
        }))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let sd = StorageDomainId::parse("storage_domain_id", &req.storage_domain_id)?;
        let img = ImageId::parse("image_id", &req.image_id)?;
        let page = PageRequest::parse(req.page_size, &req.page_token)?;
        self.worker.storage.domain(sd, "storage_domain_id")?;
        let chain: Vec<(usize, VolumeId)> = self
            .worker
            .storage
            .chain(sd, img)?
            .into_iter()
            .map(|(v, _)| v)
            .enumerate()
            .collect();
        // The token is the position in the chain (zero-padded), so pages keep the base-first order.
        let (chain, next_page_token) = page.paginate(chain, |(i, _)| format!("{i:08}"));
        let keys: Vec<VolumeKey> = chain
            .into_iter()
            .map(|(_, volume)| VolumeKey {
                storage_domain: sd,
                image: img,
                volume,
            })
            .collect();
        // The whole page's etcd records in one transaction, not two reads per volume.
        let volumes = self.volume_infos(&keys, "volume").await?;
        Ok(Response::new(pb::ListVolumesResponse {
            volumes,
            next_page_token,
        }))
    }

    async fn delete_image(
        &self,
        req: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let req = req.into_inner();
        let sd = StorageDomainId::parse("storage_domain_id", &req.storage_domain_id)?;
        let img = ImageId::parse("image_id", &req.image_id)?;
        spm::require(&self.worker).await?;
        self.worker.storage.domain(sd, "storage_domain_id")?;
        let disk = datapath_api::volume::DiskKey {
            storage_domain: sd,
            image: img,
        };
        for vol in self.worker.storage.volume_ids(sd, img)? {
            let key = VolumeKey {
                storage_domain: sd,
                image: img,
                volume: vol,
            };
            if let Some(job) = self.worker.jobs.writing(&key) {
                return Err(image_in_use(&format!("volume {key} is written by job {job}")).into());
            }
        }
        // One transaction: no volume of the image leased (written) or held (read by a copy), and
        // the image marked as being deleted, so no lease or hold can be taken until it is gone.
        let lease_id = self.worker.lease_id()?;
        match self
            .worker
            .coord
            .begin_image_deletion(&disk, self.worker.host_id, lease_id)
            .await
            .map_err(Error::from)?
        {
            Ok(()) => {}
            Err(Busy::Leased(h)) => {
                return Err(image_in_use(&format!(
                    "a volume is written by job {} on host {}",
                    h.job_id, h.host_id
                ))
                .into())
            }
            Err(Busy::Held(h)) => {
                return Err(image_in_use(&format!(
                    "a volume is read by job {} on host {}",
                    h.job_id, h.host_id
                ))
                .into())
            }
            Err(Busy::Deleting(_)) => {}
        }
        let deleted = self.worker.storage.delete_image(sd, img);
        if deleted.is_ok() {
            if let Err(e) = self.worker.coord.delete_image_generations(&disk).await {
                // Harmless if left: a volume created again under the same ids is read, copied into
                // and committed at the recorded generation, which only ever rises.
                warn!(%sd, %img, error = %e, "could not forget the image's generations");
            }
        }
        if let Err(e) = self.worker.coord.end_image_deletion(&disk).await {
            warn!(%sd, %img, error = %e, "deletion mark not removed; it expires with the session");
        }
        deleted?;
        info!(%sd, %img, "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {}))
    }

    async fn copy_data(
        &self,
        req: Request<pb::CopyDataRequest>,
    ) -> Result<Response<pb::CopyDataResponse>, Status> {
        let job = copy::copy_data(&self.worker, req.get_ref()).await?;
        Ok(Response::new(pb::CopyDataResponse { job: Some(job) }))
    }

    async fn fence_volume(
        &self,
        req: Request<pb::FenceVolumeRequest>,
    ) -> Result<Response<pb::FenceVolumeResponse>, Status> {
        let fenced = crate::fence::fence_volume(&self.worker, req.get_ref()).await?;
        let key = VolumeKey::from_pb("volume", req.get_ref().volume.as_ref())?;
        let volume = self.volume_info(&key, "volume").await?;
        Ok(Response::new(pb::FenceVolumeResponse {
            volume: Some(volume),
            fenced,
        }))
    }

    async fn list_host_jobs(
        &self,
        _req: Request<pb::ListHostJobsRequest>,
    ) -> Result<Response<pb::ListHostJobsResponse>, Status> {
        Ok(Response::new(pb::ListHostJobsResponse {
            jobs: self.worker.jobs.list(),
        }))
    }

    async fn abort_host_job(
        &self,
        req: Request<pb::AbortHostJobRequest>,
    ) -> Result<Response<pb::AbortHostJobResponse>, Status> {
        let id = JobId::parse("job_id", &req.get_ref().job_id)?;
        if !self.worker.jobs.stop(id, StopReason::Aborted) {
            return Err(Error::JobNotFound(id).into());
        }
        info!(job_id = %id, "abort requested");
        Ok(Response::new(pb::AbortHostJobResponse {}))
    }
}

fn image_in_use(why: &str) -> Error {
    Error::precondition(
        "IMAGE_IN_USE",
        "image_id",
        format!("the image cannot be deleted now: {why}"),
    )
}
