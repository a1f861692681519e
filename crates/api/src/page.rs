//! AIP-158 pagination: `page_size` (0 → default, capped) and an opaque `page_token` that resumes after
//! the last item of the previous page.
use crate::error::FieldViolation;

/// The page size used when the caller sends 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// The largest page served; larger requests are capped.
pub const MAX_PAGE_SIZE: usize = 1000;

/// A validated page request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Items in the page.
    pub size: usize,
    /// Serve items strictly after this key; `None` for the first page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Validates `page_size` and decodes `page_token`.
    pub fn parse(page_size: i32, page_token: &str) -> Result<Self, FieldViolation> {
        let size = match page_size {
            n if n < 0 => {
                return Err(FieldViolation::new(
                    "page_size",
                    "INVALID_VALUE",
                    "must not be negative",
                ))
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as usize).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_token(page_token).ok_or_else(|| {
                FieldViolation::new(
                    "page_token",
                    "INVALID_PAGE_TOKEN",
                    "not a token from this API",
                )
            })?)
        };
        Ok(Self { size, after })
    }

    /// Takes one page from `items` sorted by `key`, returning it with the next page token ("" at the end).
    pub fn paginate<T>(&self, items: Vec<T>, key: impl Fn(&T) -> String) -> (Vec<T>, String) {
        let mut page: Vec<T> = items
            .into_iter()
            .filter(|item| self.after.as_ref().is_none_or(|after| key(item) > *after))
            .take(self.size + 1)
            .collect();
        let next = if page.len() > self.size {
            page.truncate(self.size);
            page.last()
                .map(|last| encode_token(&key(last)))
                .unwrap_or_default()
        } else {
            String::new()
        };
        (page, next)
    }
}

const TOKEN_PREFIX: &str = "dp1.";

fn encode_token(key: &str) -> String {
    let hex: String = key.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{TOKEN_PREFIX}{hex}")
}

fn decode_token(token: &str) -> Option<String> {
    let hex = token.strip_prefix(TOKEN_PREFIX)?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let req = PageRequest::parse(10, &token).unwrap();
            let (page, next) = req.paginate(items.clone(), |s| s.clone());
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn bad_size_and_token_name_their_field() {
        assert_eq!(PageRequest::parse(-1, "").unwrap_err().field, "page_size");
        assert_eq!(
            PageRequest::parse(0, "garbage").unwrap_err().field,
            "page_token"
        );
        assert_eq!(PageRequest::parse(5000, "").unwrap().size, MAX_PAGE_SIZE);
    }
}
