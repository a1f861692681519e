//! A network lab for fault tests: each host-worker in its own network namespace, joined to the launcher's
//! namespace through a veth pair on a bridge that the lab creates, on a private /24 that only these
//! namespaces use. A test can then cut a host's link, restore it, or drop its traffic with nftables —
//! the faults a real cluster's network has — while every address involved lives in namespaces the lab
//! made. Everything is removed when the lab drops. Needs root.
use std::{net::Ipv4Addr, process::Command};

use anyhow::{bail, Context as _};

/// The namespaces, bridge and links of one cluster.
#[derive(Debug)]
pub struct NetworkLab {
    tag: String,
    subnet: u8,
    hosts: usize,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl NetworkLab {
    /// Creates a bridge with the gateway address and one namespace per host, each linked to it.
    pub fn create(hosts: usize) -> anyhow::Result<Self> {
        let n = (uuid::Uuid::new_v4().as_u128() & 0xffff_ffff) as u32;
        let lab = Self {
            tag: format!("{:06x}", n & 0xff_ffff),
            subnet: 100 + (n >> 24) as u8 % 150,
            hosts,
        };
        lab.build().context("build the network lab (needs root)")?;
        Ok(lab)
    }

    fn build(&self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..self.hosts {
            let (ns, outer, inner) = (self.namespace(i), self.outer_link(i), self.inner_link(i));
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            ip(&["link", "set", &outer, "master", &bridge])?;
            ip(&["link", "set", &outer, "up"])?;
            ip(&["link", "set", &inner, "netns", &ns])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", self.host_addr(i)),
                "dev",
                &inner,
            ])?;
            ip(&["-n", &ns, "link", "set", &inner, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn bridge(&self) -> String {
        format!("dpbr{}", self.tag)
    }

    /// Host `i`'s namespace.
    pub fn namespace(&self, i: usize) -> String {
        format!("dp{}h{i}", self.tag)
    }

    fn outer_link(&self, i: usize) -> String {
        format!("dp{}o{i}", self.tag)
    }

    fn inner_link(&self, i: usize) -> String {
        format!("dp{}i{i}", self.tag)
    }

    /// The bridge's address: where etcd and the job-tracker listen for the hosts.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// Host `i`'s address inside its namespace.
    pub fn host_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 10 + i as u8)
    }

    /// The command prefix that runs a program inside host `i`'s namespace.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.namespace(i)]
    }

    /// Cuts host `i`'s link (the cable pulled): nothing gets in or out.
    pub fn cut(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.outer_link(i), "down"])
    }

    /// Restores host `i`'s link.
    pub fn restore(&self, i: usize) -> anyhow::Result<()> {
        ip(&["link", "set", &self.outer_link(i), "up"])
    }

    /// Drops host `i`'s TCP traffic to `peer` (its outbound calls, e.g. to the job-tracker) and to its
    /// own server port `serving` (calls into it, e.g. from the scheduler), with nftables inside its
    /// namespace; its other paths (etcd) stay up. Undone by [`NetworkLab::heal`].
    pub fn block(&self, i: usize, peer: std::net::SocketAddr, serving: u16) -> anyhow::Result<()> {
        self.block_outbound(i, peer)?;
        self.nft(
            i,
            &format!("add rule inet datapath_lab input tcp dport {serving} drop"),
        )
    }

    /// Drops host `i`'s outbound TCP traffic to `peer` only (e.g. to etcd), so calls into the host
    /// still reach it. Undone by [`NetworkLab::heal`].
    pub fn block_outbound(&self, i: usize, peer: std::net::SocketAddr) -> anyhow::Result<()> {
        self.nft(i, "add table inet datapath_lab")?;
        for hook in ["output", "input"] {
            self.nft(
                i,
                &format!(
                    "add chain inet datapath_lab {hook} {{ type filter hook {hook} priority 0 ; }}"
                ),
            )?;
        }
        self.nft(
            i,
            &format!(
                "add rule inet datapath_lab output ip daddr {} tcp dport {} drop",
                peer.ip(),
                peer.port()
            ),
        )
    }

    /// Runs `nft <args>` inside host `i`'s namespace.
    fn nft(&self, i: usize, args: &str) -> anyhow::Result<()> {
        let ns = self.namespace(i);
        let mut all = vec!["netns", "exec", &ns, "nft"];
        all.extend(args.split(' '));
        run("ip", &all)
    }

    /// Drops (`reject`: refuses with a TCP reset) a random `percent` of every packet host `i` sends
    /// or receives, with nftables inside its namespace; undone by [`NetworkLab::heal`].
    pub fn lossy(&self, i: usize, percent: u32, reject: bool) -> anyhow::Result<()> {
        let ns = self.namespace(i);
        let nft = |args: &str| {
            let mut all = vec!["netns", "exec", &ns, "nft"];
            all.extend(args.split(' '));
            run("ip", &all)
        };
        let verdict = if reject {
            "reject with tcp reset"
        } else {
            "drop"
        };
        let protocol = if reject { "meta l4proto tcp " } else { "" };
        nft("add table inet datapath_lab")?;
        for hook in ["output", "input"] {
            nft(&format!(
                "add chain inet datapath_lab {hook} {{ type filter hook {hook} priority 0 ; }}"
            ))?;
            nft(&format!(
                "add rule inet datapath_lab {hook} {protocol}iifname != lo numgen random mod 100 < {percent} {verdict}"
            ))?;
        }
        Ok(())
    }

    /// Removes every nftables rule [`NetworkLab::block`] added in host `i`'s namespace.
    pub fn heal(&self, i: usize) -> anyhow::Result<()> {
        let ns = self.namespace(i);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &ns,
                "nft",
                "delete",
                "table",
                "inet",
                "datapath_lab",
            ],
        )
    }
}

impl Drop for NetworkLab {
    fn drop(&mut self) {
        for i in 0..self.hosts {
            // Deleting our end removes the pair at once; a namespace may outlive its deletion for a
            // while (sockets in TIME_WAIT), and its link with it.
            let _ = ip(&["link", "del", &self.outer_link(i)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
