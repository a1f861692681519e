//! `spm-only`: every data step on the SPM, as before the feature (and whenever the runtime setting
//! `data_operations_by_hsm` is false).
use super::{HostSelector, Step};

/// The SPM when it has a free slot; otherwise the step waits for one.
pub struct SpmOnly;

#[tonic::async_trait]
impl HostSelector for SpmOnly {
    fn name(&self) -> &'static str {
        "spm-only"
    }

    async fn select(&self, step: &Step) -> Option<String> {
        let spm = step.spm.as_deref()?;
        step.candidates
            .iter()
            .find(|c| c.host.host_id == spm)
            .map(|c| c.host.host_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::testing::{host, step};

    #[tokio::test]
    async fn only_the_spm_and_only_with_a_free_slot() {
        let hosts = [host("h1", 2, 0, 0), host("h2", 2, 2, 0)];
        assert_eq!(
            SpmOnly.select(&step(&hosts, Some("h1"))).await.as_deref(),
            Some("h1")
        );
        assert_eq!(SpmOnly.select(&step(&hosts, Some("h2"))).await, None);
        assert_eq!(SpmOnly.select(&step(&hosts, None)).await, None);
    }
}
