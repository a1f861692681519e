//! `dpctl decode` reads whatever is piped into it (`etcdctl get --prefix … -w json`): no input may
//! panic it, and the records it prints keep their keys.
//!
//! Input starting with `{`: the JSON text itself. Otherwise one byte `n`, `n` bytes of key, then
//! the value, wrapped into etcdctl's JSON here so that the fuzzer works on the raw record and not
//! on its base64.
#![no_main]

use base64::{engine::general_purpose::STANDARD, Engine as _};
use datapath_coord::{keys::DEFAULT_PREFIX, Keys};
use dpctl::cmd::decode::decode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let keys = Keys::new(DEFAULT_PREFIX);
    if data.first() == Some(&b'{') {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = decode(&keys, text);
        }
        return;
    }
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (key, value) = rest.split_at(usize::from(n).min(rest.len()));
    let json = serde_json::json!({
        "header": {"revision": 9},
        "kvs": [{
            "key": STANDARD.encode(key),
            "value": STANDARD.encode(value),
            "create_revision": 3,
            "mod_revision": 7,
            "lease": 0,
        }],
    })
    .to_string();
    if let Ok(records) = decode(&keys, &json) {
        assert_eq!(records.len(), 1);
        assert_eq!(
            records[0]["key"].as_str(),
            Some(String::from_utf8_lossy(key).as_ref())
        );
        assert_eq!(records[0]["modRevision"], 7);
    }
});
