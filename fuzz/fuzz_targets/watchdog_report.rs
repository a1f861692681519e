//! The copier's stderr is qemu-img's text with the watchdog's reports mixed in: splitting a line
//! must never panic, must only cut a real report off its end, and must find any report it glued on.
#![no_main]

use arbitrary::Arbitrary;
use datapath_host_worker::watchdog::split_report;
use libfuzzer_sys::fuzz_target;

/// As the watchdog prints it (`watchdog.rs`'s private `BYTES_WRITTEN`).
const MARKER: &str = "copier-watchdog: bytes-written ";

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// What the copier wrote before the report, or a whole line.
    message: &'a str,
    written: u64,
    /// What follows the figure (`\r`, spaces, or garbage).
    tail: &'a str,
}

fn check(line: &str) -> (&str, Option<u64>) {
    let (message, written) = split_report(line);
    assert!(line.starts_with(message), "{line:?} → {message:?}");
    match written {
        Some(n) => {
            let rest = line[message.len()..]
                .strip_prefix(MARKER)
                .unwrap_or_else(|| panic!("{line:?}: the cut is not at a report"));
            assert_eq!(rest.trim_end().parse::<u64>().ok(), Some(n), "{line:?}");
        }
        None => assert_eq!(message, line),
    }
    (message, written)
}

fuzz_target!(|input: Input<'_>| {
    check(input.message);
    let line = format!("{}{MARKER}{}{}", input.message, input.written, input.tail);
    let (message, written) = check(&line);
    if !input.message.contains(MARKER) && input.tail.trim_end().is_empty() {
        assert_eq!(
            (message, written),
            (input.message, Some(input.written)),
            "{line:?}"
        );
    }
});
