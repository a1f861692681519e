//! Following the SPM. Structural verbs (create a volume, delete an image) are accepted only by the SPM
//! host; any other host answers FAILED_PRECONDITION with reason NOT_SPM and the SPM's address in the
//! error's metadata. [`follow`] sends such a call once more, to that address — once only, so two hosts
//! that disagree about the SPM (the role is changing hands) cannot bounce a call forever.
use std::future::Future;

use anyhow::Context as _;
use datapath_api::error::{metadata, reason};
use tonic::{Code, Response, Status};

use crate::client::{self, HostWorkerClient};

/// Where a refusal says the SPM is: the `spm_address` of a NOT_SPM error, as a URL.
pub fn redirect(status: &Status) -> Option<String> {
    let not_spm =
        status.code() == Code::FailedPrecondition && reason(status).as_deref() == Some("NOT_SPM");
    not_spm
        .then(|| metadata(status, "spm_address"))
        .flatten()
        .filter(|a| !a.trim().is_empty())
        .map(|a| client::normalize_url(a.trim()))
}

/// Calls `call` on `host`; when the host answers NOT_SPM, calls it once more on the SPM it names
/// (reached with the same TLS settings). A gRPC failure comes back as the [`Status`] itself (so
/// `dpctl` prints it with its reason).
pub async fn follow<T, F, Fut>(
    host: HostWorkerClient,
    tls: Option<&datapath_tls::Tls>,
    call: F,
) -> anyhow::Result<T>
where
    F: FnMut(HostWorkerClient) -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
{
    follow_with(host, call, |url| async move {
        client::host_worker(&url, tls)
            .await
            .with_context(|| format!("reach the SPM at {url}"))
    })
    .await
}

/// [`follow`] with the way to reach the SPM given, so it can be tested without servers.
async fn follow_with<C, T, F, Fut, Reach, ReachFut>(
    host: C,
    mut call: F,
    reach: Reach,
) -> anyhow::Result<T>
where
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<Response<T>, Status>>,
    Reach: FnOnce(String) -> ReachFut,
    ReachFut: Future<Output = anyhow::Result<C>>,
{
    let status = match call(host).await {
        Ok(response) => return Ok(response.into_inner()),
        Err(status) => status,
    };
    let Some(url) = redirect(&status) else {
        return Err(status.into());
    };
    tracing::debug!(%url, "not the SPM; following");
    let spm = reach(url).await?;
    Ok(call(spm).await?.into_inner())
}

#[cfg(test)]
mod tests {
    use datapath_api::error::status_with_metadata;

    use super::*;

    fn not_spm(address: &str) -> Status {
        status_with_metadata(
            Code::FailedPrecondition,
            "NOT_SPM",
            "this host is not the SPM",
            &[
                ("spm_host_id", "6f1c…".into()),
                ("spm_address", address.into()),
            ],
        )
    }

    #[test]
    fn only_not_spm_errors_redirect() {
        assert_eq!(
            redirect(&not_spm("127.0.0.1:7302")).as_deref(),
            Some("http://127.0.0.1:7302")
        );
        assert_eq!(redirect(&not_spm("")), None, "no address to go to");
        let no_spm = status_with_metadata(Code::Unavailable, "NO_SPM", "none yet", &[]);
        assert_eq!(redirect(&no_spm), None);
        let other = status_with_metadata(
            Code::FailedPrecondition,
            "IMAGE_IN_USE",
            "busy",
            &[("spm_address", "127.0.0.1:1".into())],
        );
        assert_eq!(redirect(&other), None);
    }

    /// A fake cluster: hosts named by URL; `spm` accepts, the others answer NOT_SPM naming `names`.
    fn answer(host: &str, spm: &str, names: &str) -> Result<Response<String>, Status> {
        if host == spm {
            Ok(Response::new(format!("done by {host}")))
        } else {
            Err(not_spm(names))
        }
    }

    #[tokio::test]
    async fn a_refused_call_is_sent_once_to_the_spm_named() {
        let spm = "http://b:1";
        let mut calls = Vec::new();
        let done = follow_with(
            "http://a:1".to_string(),
            |host| {
                calls.push(host.clone());
                let result = answer(&host, spm, "b:1");
                async move { result }
            },
            |url| async move { Ok(url) },
        )
        .await
        .unwrap();
        assert_eq!(done, "done by http://b:1");
        assert_eq!(calls, ["http://a:1", "http://b:1"]);
    }

    #[tokio::test]
    async fn hosts_that_disagree_about_the_spm_do_not_bounce_a_call_forever() {
        let mut calls = 0;
        let err = follow_with(
            "http://a:1".to_string(),
            |host| {
                calls += 1;
                // a names b, and b names a: nobody accepts.
                let names = if host == "http://a:1" { "b:1" } else { "a:1" };
                let result = answer(&host, "http://nobody", names);
                async move { result }
            },
            |url| async move { Ok(url) },
        )
        .await
        .unwrap_err();
        assert_eq!(calls, 2);
        let status = err.downcast_ref::<Status>().expect("the status itself");
        assert_eq!(reason(status).as_deref(), Some("NOT_SPM"));
    }
}
