//! qemu-img's progress lines and `info --output=json` come from another program's output: neither
//! parser may panic, and a progress figure is a percentage.
#![no_main]

use datapath_host_worker::qemu::{parse_header, parse_progress};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(header) = parse_header(data) {
        let value: serde_json::Value = serde_json::from_slice(data).expect("parsed, so it is JSON");
        let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
        assert_eq!(header.backing, field("backing-filename"));
        assert_eq!(header.backing_format, field("backing-filename-format"));
    }
    if let Ok(line) = std::str::from_utf8(data) {
        if let Some(p) = parse_progress(line) {
            assert!(p <= 100, "{line:?} gave {p}");
        }
    }
});
