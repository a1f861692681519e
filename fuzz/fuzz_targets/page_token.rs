//! `page_size` and `page_token` come straight from gRPC callers: any pair must be answered, never
//! panic on, and a token the API itself hands out must lead back to the key it was made from.
#![no_main]

use arbitrary::Arbitrary;
use datapath_api::page::{PageRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    page_size: i32,
    page_token: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    match PageRequest::parse(input.page_size, input.page_token) {
        Ok(req) => {
            assert!(input.page_size >= 0);
            assert!((1..=MAX_PAGE_SIZE).contains(&req.size));
            if input.page_size == 0 {
                assert_eq!(req.size, DEFAULT_PAGE_SIZE);
            }
            assert_eq!(req.after.is_none(), input.page_token.is_empty());
        }
        Err(v) => {
            assert!(v.field == "page_size" || v.field == "page_token", "{v:?}");
        }
    }

    // The token that follows a one-item page names that item's key (the token text as the key).
    let key = input.page_token.to_string();
    let first = PageRequest {
        size: 1,
        after: None,
    };
    let (page, next) = first.paginate(vec![key.clone(), format!("{key}\u{10ffff}")], Clone::clone);
    assert_eq!(page, vec![key.clone()]);
    let resumed = PageRequest::parse(1, &next).expect("the API's own token parses");
    assert_eq!(resumed.after.as_deref(), Some(key.as_str()));
});
