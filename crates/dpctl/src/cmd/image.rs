//! `dpctl image delete`: removes an image (a disk) and all its volumes from a storage domain, through
//! the SPM (followed there when the chosen host is not the SPM).
use anyhow::Context as _;
use clap::Subcommand;
use datapath_api::pb;

use super::Context;
use crate::{
    output::{self, Output},
    parse::{image_id_arg, sd_id_arg},
    spm,
};

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Delete an image and all its volumes (fails while one is leased).
    Delete {
        /// The storage domain id.
        #[arg(value_parser = sd_id_arg)]
        sd: String,
        /// The image id.
        #[arg(value_parser = image_id_arg)]
        img: String,
    },
}

impl ImageCommand {
    /// Runs it.
    pub async fn run(self, ctx: &Context) -> anyhow::Result<()> {
        let Self::Delete { sd, img } = self;
        let request = pb::DeleteImageRequest {
            storage_domain_id: sd.clone(),
            image_id: img.clone(),
        };
        let host = ctx.host_worker().await?;
        // Only the SPM deletes images: a NOT_SPM answer is followed to the SPM it names.
        let response = spm::follow(host, ctx.tls()?, |mut h| {
            let request = request.clone();
            async move { h.delete_image(request).await }
        })
        .await
        .with_context(|| format!("delete image {sd}/{img}"))?;
        match ctx.output() {
            Output::Json => output::print_json(&response)?,
            Output::Text => println!("deleted image {sd}/{img}"),
        }
        Ok(())
    }
}
