//! Volume `.meta` files are read from shared storage that any host (or an operator's editor) may
//! have written: parsing must never panic, and whatever parses must survive render → parse.
#![no_main]

use datapath_host_worker::storage::metadata::VolumeMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(meta) = VolumeMeta::parse(text) else {
        return;
    };
    let rendered = meta.render();
    let again = VolumeMeta::parse(&rendered)
        .unwrap_or_else(|e| panic!("rendered metadata does not parse ({e}):\n{rendered}"));
    assert_eq!(again, meta, "render → parse changed the value:\n{rendered}");
    assert_eq!(again.render(), rendered, "render is not a fixed point");
});
