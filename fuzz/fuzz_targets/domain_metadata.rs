//! A storage domain's `dom_md/metadata` lives on shared storage and is parsed inline by
//! `Storage::domain` (there is no standalone parser), so this writes each input there and reads it
//! back through the public API. It must never panic, and a name given to `create_domain` must come
//! back as written, line breaks aside.
#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use datapath_api::ids::StorageDomainId;
use datapath_host_worker::storage::Storage;
use libfuzzer_sys::fuzz_target;

/// One storage root per fuzzing process, removed when it exits normally.
fn root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("datapath-fuzz-domain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the fuzzing storage root");
        extern "C" fn cleanup() {
            if let Some(dir) = ROOT.get() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(cleanup) };
        dir
    })
}

fn storage() -> &'static Storage {
    static STORAGE: OnceLock<Storage> = OnceLock::new();
    STORAGE.get_or_init(|| Storage::open(root()).expect("open the fuzzing storage root"))
}

/// The domain whose metadata file is overwritten with raw input.
fn raw_domain() -> StorageDomainId {
    static SD: OnceLock<StorageDomainId> = OnceLock::new();
    *SD.get_or_init(|| {
        let sd = StorageDomainId::random();
        storage()
            .create_domain(sd, "seed")
            .expect("create the raw domain");
        sd
    })
}

fuzz_target!(|data: &[u8]| {
    let storage = storage();
    match data.split_first() {
        // A name through create_domain → domain.
        Some((0, name)) => {
            let Ok(name) = std::str::from_utf8(name) else {
                return;
            };
            let sd = StorageDomainId::random();
            let created = storage.create_domain(sd, name).expect("create a domain");
            assert_eq!(created.name, name);
            let read = storage
                .domain(sd, "sd")
                .expect("read back a created domain");
            assert_eq!(read.storage_domain_id, sd.to_string());
            assert_eq!(read.name, name.replace(['\n', '\r'], " "));
            // The file keeps whole seconds.
            let seconds = |t: Option<prost_types::Timestamp>| t.map(|t| t.seconds);
            assert_eq!(seconds(read.created_at), seconds(created.created_at));
            std::fs::remove_dir_all(storage.domain_dir(sd)).expect("remove the domain");
        }
        // Any bytes as the metadata file.
        _ => {
            let sd = raw_domain();
            let path = storage.domain_dir(sd).join("dom_md").join("metadata");
            std::fs::write(&path, data).expect("write the metadata file");
            let Ok(text) = std::str::from_utf8(data) else {
                assert!(
                    storage.domain(sd, "sd").is_err(),
                    "non-UTF-8 metadata was accepted"
                );
                return;
            };
            let read = storage.domain(sd, "sd").expect("UTF-8 metadata reads");
            assert_eq!(read.storage_domain_id, sd.to_string());
            assert!(!read.name.contains('\n'));
            if read.name.is_empty() {
                return;
            }
            assert!(text.contains(&format!("DESCRIPTION={}", read.name)));
        }
    }
});
