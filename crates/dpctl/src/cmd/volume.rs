//! `dpctl volume create|info|list`: volumes of a storage domain, through the chosen host (creation
//! through the SPM, which the chosen host names when it is not the SPM itself).
use anyhow::{bail, Context as _};
use clap::{Subcommand, ValueEnum};
use datapath_api::pb;

use super::{all_pages, Context, PAGE_SIZE};
use crate::{
    output::{self, Output},
    parse::{image_id_arg, parse_size, sd_id_arg, volume_id_arg, VolumePath},
    spm,
};

/// Volume commands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (new image and volume ids when absent); prints <sd>/<img>/<vol>.
    Create(CreateArgs),
    /// Show a volume: `volume info SD IMG VOL` or `volume info SD/IMG/VOL`.
    Info {
        /// The storage domain, image and volume ids, or one SD/IMG/VOL.
        #[arg(num_args = 1..=3, required = true)]
        ids: Vec<String>,
    },
    /// List the images of a domain, or the volumes of one image.
    List {
        /// The storage domain id.
        #[arg(value_parser = sd_id_arg)]
        sd: String,
        /// An image id: list its volumes instead of the domain's images.
        #[arg(value_parser = image_id_arg)]
        img: Option<String>,
    },
}

/// `volume create` flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The storage domain id.
    #[arg(long, env = "DATAPATH_VOLUME_DOMAIN", value_parser = sd_id_arg)]
    domain: String,
    /// The image id; a new one when absent.
    #[arg(long, env = "DATAPATH_VOLUME_IMAGE", value_parser = image_id_arg)]
    image: Option<String>,
    /// The volume id; a new one when absent.
    #[arg(long, env = "DATAPATH_VOLUME_ID", value_parser = volume_id_arg)]
    volume: Option<String>,
    /// Disk format; default cow with --parent, raw otherwise.
    #[arg(long, env = "DATAPATH_VOLUME_FORMAT", value_enum)]
    format: Option<Format>,
    /// Space allocation.
    #[arg(long, env = "DATAPATH_VOLUME_ALLOCATION", value_enum, default_value_t = Allocation::Sparse)]
    allocation: Allocation,
    /// Capacity: bytes, or with a K, M, G, T suffix (powers of 1024).
    #[arg(long, env = "DATAPATH_VOLUME_SIZE", value_parser = parse_size)]
    size: u64,
    /// The parent volume in the same image (qcow2 backing file).
    #[arg(long, env = "DATAPATH_VOLUME_PARENT", value_parser = volume_id_arg)]
    parent: Option<String>,
    /// Its role in the chain; the host's default (leaf) when absent.
    #[arg(long, env = "DATAPATH_VOLUME_ROLE", value_enum)]
    role: Option<Role>,
    /// Create it illegal, as a container a copy will fill.
    #[arg(long, env = "DATAPATH_VOLUME_ILLEGAL")]
    illegal: bool,
    /// A free-text description.
    #[arg(long, env = "DATAPATH_VOLUME_DESCRIPTION", default_value = "")]
    description: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Raw,
    Cow,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Allocation {
    Sparse,
    Preallocated,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Shared,
    Leaf,
    Internal,
}

impl VolumeCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        match self {
            Self::Create(args) => create(ctx, args).await,
            Self::Info { ids } => {
                let path = match ids.as_slice() {
                    [one] => one.parse::<VolumePath>(),
                    [sd, img, vol] => VolumePath::from_parts(sd, img, vol),
                    _ => bail!("volume info takes SD IMG VOL or SD/IMG/VOL"),
                }
                .map_err(anyhow::Error::msg)?;
                info(ctx, &path).await
            }
            Self::List { sd, img: None } => list_images(ctx, sd).await,
            Self::List { sd, img: Some(img) } => list_volumes(ctx, sd, img).await,
        }
    }
}

async fn create(ctx: &Context, args: CreateArgs) -> anyhow::Result<()> {
    let new_id = || uuid::Uuid::new_v4().to_string();
    let path = VolumePath {
        storage_domain_id: args.domain,
        image_id: args.image.unwrap_or_else(new_id),
        volume_id: args.volume.unwrap_or_else(new_id),
    };
    let format = match args.format {
        Some(Format::Raw) => pb::VolumeFormat::Raw,
        Some(Format::Cow) => pb::VolumeFormat::Cow,
        None if args.parent.is_some() => pb::VolumeFormat::Cow,
        None => pb::VolumeFormat::Raw,
    };
    let allocation = match args.allocation {
        Allocation::Sparse => pb::VolumeAllocation::Sparse,
        Allocation::Preallocated => pb::VolumeAllocation::Preallocated,
    };
    let role = match args.role {
        None => pb::VolumeRole::Unspecified,
        Some(Role::Shared) => pb::VolumeRole::Shared,
        Some(Role::Leaf) => pb::VolumeRole::Leaf,
        Some(Role::Internal) => pb::VolumeRole::Internal,
    };
    let legality = if args.illegal {
        pb::Legality::Illegal
    } else {
        pb::Legality::Unspecified
    };
    let request = pb::CreateVolumeRequest {
        volume: Some(path.to_ref()),
        format: format as i32,
        allocation: allocation as i32,
        capacity_bytes: args.size,
        parent_volume_id: args.parent.unwrap_or_default(),
        role: role as i32,
        legality: legality as i32,
        description: args.description,
    };
    let host = ctx.host_worker().await?;
    // Only the SPM creates volumes: a NOT_SPM answer is followed to the SPM it names.
    let response = spm::follow(host, ctx.tls()?, |mut h| {
        let request = request.clone();
        async move { h.create_volume(request).await }
    })
    .await
    .with_context(|| format!("create volume {path}"))?;
    match ctx.output() {
        Output::Json => output::print_json(&response)?,
        Output::Text => println!("{path}"),
    }
    Ok(())
}

async fn info(ctx: &Context, path: &VolumePath) -> anyhow::Result<()> {
    let mut host = ctx.host_worker().await?;
    let response = host
        .get_volume_info(pb::GetVolumeInfoRequest {
            volume: Some(path.to_ref()),
        })
        .await
        .with_context(|| format!("get volume {path}"))?
        .into_inner();
    if ctx.output() == Output::Json {
        return output::print_json(&response);
    }
    let info = response.volume.unwrap_or_default();
    let meta = info.metadata.unwrap_or_default();
    let lease = info.lease.map_or_else(
        || "-".to_string(),
        |l| {
            format!(
                "host {} job {} (revision {})",
                l.host_id, l.job_id, l.revision
            )
        },
    );
    let lines = [
        ("volume", path.to_string()),
        ("format", output::volume_format(meta.format)),
        ("allocation", output::volume_allocation(meta.allocation)),
        (
            "capacity",
            format!(
                "{} ({})",
                output::bytes(meta.capacity_bytes),
                meta.capacity_bytes
            ),
        ),
        ("allocated", output::bytes(info.allocated_bytes)),
        (
            "parent",
            output::or_dash(&meta.parent_volume_id).to_string(),
        ),
        ("role", output::volume_role(meta.role)),
        ("legality", output::legality(meta.legality)),
        ("generation", meta.generation.to_string()),
        ("lease", lease),
        ("created", output::timestamp(meta.created_at.as_ref())),
        (
            "description",
            output::or_dash(&meta.description).to_string(),
        ),
    ];
    for (key, value) in lines {
        println!("{key:<12}{value}");
    }
    Ok(())
}

async fn list_images(ctx: &Context, sd: String) -> anyhow::Result<()> {
    let host = ctx.host_worker().await?;
    let images = all_pages(|page_token| {
        let (mut host, sd) = (host.clone(), sd.clone());
        async move {
            let req = pb::ListImagesRequest {
                storage_domain_id: sd.clone(),
                page_size: PAGE_SIZE,
                page_token,
            };
            let page = host
                .list_images(req)
                .await
                .with_context(|| format!("list images of storage domain {sd}"))?
                .into_inner();
            Ok((page.images, page.next_page_token))
        }
    })
    .await?;
    let all = pb::ListImagesResponse {
        images,
        next_page_token: String::new(),
    };
    if ctx.output() == Output::Json {
        return output::print_json(&all);
    }
    let rows: Vec<Vec<String>> = all
        .images
        .iter()
        .map(|i| {
            vec![
                i.image_id.clone(),
                output::or_dash(&i.volume_ids.join(",")).to_string(),
            ]
        })
        .collect();
    println!("{}", output::table(&["IMAGE_ID", "VOLUMES"], &rows));
    Ok(())
}

async fn list_volumes(ctx: &Context, sd: String, img: String) -> anyhow::Result<()> {
    let host = ctx.host_worker().await?;
    let volumes = all_pages(|page_token| {
        let (mut host, sd, img) = (host.clone(), sd.clone(), img.clone());
        async move {
            let req = pb::ListVolumesRequest {
                storage_domain_id: sd.clone(),
                image_id: img.clone(),
                page_size: PAGE_SIZE,
                page_token,
            };
            let page = host
                .list_volumes(req)
                .await
                .with_context(|| format!("list volumes of image {sd}/{img}"))?
                .into_inner();
            Ok((page.volumes, page.next_page_token))
        }
    })
    .await?;
    let all = pb::ListVolumesResponse {
        volumes,
        next_page_token: String::new(),
    };
    if ctx.output() == Output::Json {
        return output::print_json(&all);
    }
    let rows: Vec<Vec<String>> = all.volumes.iter().map(volume_row).collect();
    let headers = [
        "VOLUME_ID",
        "FORMAT",
        "ALLOCATION",
        "CAPACITY",
        "LEGALITY",
        "GEN",
        "PARENT",
        "LEASE",
    ];
    println!("{}", output::table(&headers, &rows));
    Ok(())
}

fn volume_row(info: &pb::VolumeInfo) -> Vec<String> {
    let meta = info.metadata.clone().unwrap_or_default();
    vec![
        info.volume
            .as_ref()
            .map(|v| v.volume_id.clone())
            .unwrap_or_default(),
        output::volume_format(meta.format),
        output::volume_allocation(meta.allocation),
        output::bytes(meta.capacity_bytes),
        output::legality(meta.legality),
        meta.generation.to_string(),
        output::or_dash(&meta.parent_volume_id).to_string(),
        info.lease
            .as_ref()
            .map_or_else(|| "-".to_string(), |l| format!("host {}", l.host_id)),
    ]
}
