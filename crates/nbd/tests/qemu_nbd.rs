//! The client against a real `qemu-nbd` on real files: what it reads equals the file, what it
//! writes lands in the file, block status tells data from holes and a chain's layers apart, and
//! many requests share one socket.
use std::{path::Path, process::Command, sync::Arc};

use datapath_nbd::{proto, Client, ContextExtents, NbdError, QemuNbd};

const MIB: u64 = 1024 * 1024;

/// A `qemu-nbd` serving one image on a socket in the test's directory.
struct Server(QemuNbd);

impl Server {
    fn start(dir: &Path, image: &Path, format: &str, extra: &[&str]) -> Self {
        let name = image.file_name().unwrap().to_string_lossy();
        let socket = dir.join(format!("nbd-{name}.sock"));
        Self(QemuNbd::start(&socket, image, format, extra).expect("qemu-nbd runs"))
    }

    async fn connect(&mut self, contexts: &[&str]) -> Client {
        self.0.connect("", contexts).await.unwrap()
    }
}

fn qemu_img(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
}

/// `len` bytes of a pattern that differs at every offset and from file to file (`seed`).
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// A sparse raw file of `size` with `data` written at each offset.
fn sparse_raw(path: &Path, size: u64, data: &[(u64, Vec<u8>)]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (at, bytes) in data {
        f.write_all_at(bytes, *at).unwrap();
    }
    f.sync_all().unwrap();
}

fn context<'a>(status: &'a [ContextExtents], name: &str) -> &'a ContextExtents {
    status
        .iter()
        .find(|c| c.context == name)
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

#[tokio::test]
async fn reads_equal_the_file_and_block_status_tells_data_from_holes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    let (a, b) = (pattern(1, MIB as usize), pattern(2, 64 * 1024));
    sparse_raw(
        &image,
        16 * MIB,
        &[(4 * MIB, a.clone()), (10 * MIB, b.clone())],
    );
    let mut server = Server::start(dir.path(), &image, "raw", &["--read-only"]);
    let client = server.connect(&["base:allocation"]).await;

    assert_eq!(client.size(), 16 * MIB);
    assert!(client.export().structured, "structured replies negotiated");
    assert!(client.export().contexts.contains_key("base:allocation"));

    assert_eq!(client.read(4 * MIB, MIB as u32).await.unwrap(), a);
    assert_eq!(client.read(10 * MIB, 64 * 1024).await.unwrap(), b);
    let straddling = client.read(4 * MIB - 4096, 8192).await.unwrap();
    assert_eq!(
        &straddling[..4096],
        &[0u8; 4096][..],
        "the hole before the data"
    );
    assert_eq!(&straddling[4096..], &a[..4096]);

    let status = client.block_status(0, 16 * MIB as u32).await.unwrap();
    let extents = &context(&status, "base:allocation").extents;
    let data: Vec<(u64, u64)> = extents
        .iter()
        .filter(|e| e.flags & proto::STATE_HOLE == 0)
        .map(|e| (e.offset, e.length))
        .collect();
    assert!(
        data.iter().any(|&(o, l)| o <= 4 * MIB && o + l >= 5 * MIB),
        "the 1 MiB of data at 4 MiB is data: {extents:?}"
    );
    let hole_at_0 = extents.first().unwrap();
    assert_eq!(hole_at_0.offset, 0);
    assert_eq!(
        hole_at_0.flags,
        proto::STATE_HOLE | proto::STATE_ZERO,
        "the start is a hole reading as zeroes: {extents:?}"
    );
    let covered: u64 = extents.iter().map(|e| e.length).sum();
    assert!(covered > 0 && covered <= 16 * MIB);
    for pair in extents.windows(2) {
        assert_eq!(
            pair[0].offset + pair[0].length,
            pair[1].offset,
            "consecutive"
        );
    }

    // Refused here, before anything is sent: a write to a read-only export, a read past the end.
    assert!(matches!(
        client.write(0, vec![1; 512]).await,
        Err(NbdError::Unsupported(_))
    ));
    assert!(matches!(
        client.read(16 * MIB - 512, 1024).await,
        Err(NbdError::Unsupported(_))
    ));
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn writes_zeroes_and_a_flush_land_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("dest.raw");
    let old = pattern(3, 2 * MIB as usize);
    sparse_raw(&image, 8 * MIB, &[(MIB, old.clone())]);
    let mut server = Server::start(dir.path(), &image, "raw", &[]);
    let client = server.connect(&[]).await;

    let new = pattern(4, MIB as usize);
    client.write(5 * MIB, new.clone()).await.unwrap();
    client.write_zeroes(MIB, MIB as u32, false).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(client.read(5 * MIB, MIB as u32).await.unwrap(), new);
    client.disconnect().await.unwrap();
    drop(server);

    let file = std::fs::read(&image).unwrap();
    assert_eq!(&file[5 * MIB as usize..6 * MIB as usize], &new[..]);
    assert!(
        file[MIB as usize..2 * MIB as usize].iter().all(|&b| b == 0),
        "the zeroed MiB"
    );
    assert_eq!(
        &file[2 * MIB as usize..3 * MIB as usize],
        &old[MIB as usize..],
        "the MiB after the zeroes untouched"
    );
}

#[tokio::test]
async fn many_requests_in_flight_on_one_socket_each_get_their_own_reply() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("many.raw");
    let content = pattern(5, 16 * MIB as usize);
    std::fs::write(&image, &content).unwrap();
    let mut server = Server::start(dir.path(), &image, "raw", &["--read-only"]);
    let client = Arc::new(server.connect(&[]).await);

    let mut reads = tokio::task::JoinSet::new();
    for i in 0..128u64 {
        let (client, len) = (client.clone(), 4096 + (i % 7) * 4096);
        let at = (i * 131 * 1024) % (16 * MIB - len);
        reads.spawn(async move { (at, client.read(at, len as u32).await.unwrap()) });
    }
    let mut done = 0;
    while let Some(r) = reads.join_next().await {
        let (at, bytes) = r.unwrap();
        assert_eq!(
            bytes,
            &content[at as usize..at as usize + bytes.len()],
            "at {at}"
        );
        done += 1;
    }
    assert_eq!(done, 128);
}

#[tokio::test]
async fn allocation_depth_tells_the_layers_of_a_chain_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (base, top) = (dir.path().join("base.qcow2"), dir.path().join("top.qcow2"));
    let base_raw = dir.path().join("base.raw");
    sparse_raw(&base_raw, 8 * MIB, &[(0, pattern(6, MIB as usize))]);
    qemu_img(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        base_raw.to_str().unwrap(),
        base.to_str().unwrap(),
    ]);
    qemu_img(&[
        "create",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        base.to_str().unwrap(),
        top.to_str().unwrap(),
    ]);
    let top_data = pattern(7, MIB as usize);
    {
        let mut writer = Server::start(dir.path(), &top, "qcow2", &[]);
        let c = writer.connect(&[]).await;
        c.write(4 * MIB, top_data.clone()).await.unwrap();
        c.flush().await.unwrap();
        c.disconnect().await.unwrap();
    }
    let mut server = Server::start(
        dir.path(),
        &top,
        "qcow2",
        &["--read-only", "--allocation-depth"],
    );
    let client = server
        .connect(&["base:allocation", "qemu:allocation-depth"])
        .await;
    let status = client.block_status(0, 8 * MIB as u32).await.unwrap();
    let depth = &context(&status, "qemu:allocation-depth").extents;
    let depth_at = |at: u64| {
        depth
            .iter()
            .find(|e| e.offset <= at && at < e.offset + e.length)
            .map(|e| e.flags)
    };
    assert_eq!(depth_at(0), Some(2), "the base's data: {depth:?}");
    assert_eq!(depth_at(4 * MIB), Some(1), "the top's data: {depth:?}");
    assert_eq!(depth_at(2 * MIB), Some(0), "in no layer: {depth:?}");
    assert_eq!(client.read(4 * MIB, MIB as u32).await.unwrap(), top_data);
    assert_eq!(
        client.read(0, 4096).await.unwrap(),
        pattern(6, 4096),
        "read through to the base"
    );
}

#[tokio::test]
async fn an_export_the_server_does_not_have_is_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("named.raw");
    sparse_raw(&image, MIB, &[]);
    let mut server = Server::start(dir.path(), &image, "raw", &["--export-name=disk"]);
    let named = server.0.connect("disk", &[]).await.unwrap();
    assert_eq!(named.size(), MIB);
    named.disconnect().await.unwrap();
    drop(server);
    let mut server = Server::start(dir.path(), &image, "raw", &["--export-name=disk"]);
    match server.0.connect("another", &[]).await {
        Err(NbdError::OptionRefused { option, reply, .. }) => {
            assert_eq!(option, proto::OPT_GO);
            assert_ne!(reply & proto::REP_FLAG_ERROR, 0);
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("connected to an export the server does not have"),
    }
}
