//! etcd locked to datapath: after a TLS etcd starts, the launcher (as etcd's `root`, by certificate)
//! creates two roles scoped to the cluster's key prefix — `datapath`, read and write, and
//! `datapath-viewer`, read only — and users of the same names without passwords (etcd takes a client
//! certificate's common name as the user: services, operators and admins carry `datapath`, viewers
//! `datapath-viewer`), then enables authentication. From then on a client without a certificate of the
//! cluster CA cannot connect, and one whose certificate names another user can read or write nothing
//! under the prefix. A restarted etcd keeps it (it is in etcd's data).
use anyhow::Context as _;
use datapath_tls::identity::{ETCD_USER, ETCD_VIEWER};
use etcd_client::{Client, ConnectOptions, Permission, UserAddOptions};

use super::pki::Pki;

/// The end of the key range `[prefix, end)`: the prefix with its last byte incremented.
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Sets the users and roles up and enables authentication, on a new etcd (the launcher wipes etcd's
/// data at every start).
pub async fn lock(endpoints: &[String], prefix: &str, pki: &Pki) -> anyhow::Result<()> {
    let options = ConnectOptions::new().with_tls(pki.etcd_root()?);
    let mut etcd = Client::connect(endpoints, Some(options))
        .await
        .context("connect to etcd as root")?;
    let end = range_end(prefix);
    etcd.user_add("root", "", Some(UserAddOptions::new().with_no_pwd()))
        .await
        .context("add etcd user root")?;
    etcd.user_grant_role("root", "root")
        .await
        .context("grant root its role")?;
    for (user, write) in [(ETCD_USER, true), (ETCD_VIEWER, false)] {
        etcd.role_add(user)
            .await
            .with_context(|| format!("add etcd role {user}"))?;
        let permission = match write {
            true => Permission::read_write(prefix),
            false => Permission::read(prefix),
        }
        .with_range_end(end.clone());
        etcd.role_grant_permission(user, permission)
            .await
            .with_context(|| format!("grant {user} its prefix"))?;
        etcd.user_add(user, "", Some(UserAddOptions::new().with_no_pwd()))
            .await
            .with_context(|| format!("add etcd user {user}"))?;
        etcd.user_grant_role(user, user)
            .await
            .with_context(|| format!("grant {user} its role"))?;
    }
    etcd.auth_enable()
        .await
        .context("enable etcd authentication")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_ends_right_after_the_prefix() {
        assert_eq!(range_end("/datapath/"), b"/datapath0".to_vec());
        assert_eq!(range_end("a\u{7f}"), vec![b'a', 0x80]);
    }
}
