//! The store probe behind the job-tracker's and the scheduler's health: their liveness is etcd's, as
//! they see it.
use etcd_client::GetOptions;

use crate::{Coord, Result};

impl Coord {
    /// One linearizable read of a single key (count only): it succeeds only when the member in use
    /// answers and a quorum stands behind it, which is what every write of the caller needs too.
    pub async fn probe(&self) -> Result<()> {
        self.client()
            .get(
                self.keys().prefix(),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(())
    }
}
