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

impl PageRequest {
    /// The items that match `keep` from the page token on, read in chunks of `size + 1` by
    /// `read(after, limit)` → (items, the key of the last item read, whether more follow), until
    /// the page and one more match (which says whether a next page exists) or the items run out:
    /// a page never reads a whole store at once. For [`PageRequest::paginate`].
    pub async fn gather<T, E, F, Fut>(
        &self,
        mut read: F,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, E>
    where
        F: FnMut(Option<String>, usize) -> Fut,
        Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>, bool), E>>,
    {
        let mut matched = Vec::new();
        let mut after = self.after.clone();
        loop {
            let (chunk, last, more) = read(after.clone(), self.size + 1).await?;
            after = last.or(after);
            matched.extend(chunk.into_iter().filter(|item| keep(item)));
            if !more || matched.len() > self.size {
                return Ok(matched);
            }
        }
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

    /// A store of 0..25 read 3 at a time at most: the pages of the even items cover them once,
    /// and no read asks for more than a page and one.
    #[tokio::test]
    async fn gathered_pages_read_in_bounded_chunks() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:02}")).collect();
        let reads = std::cell::Cell::new(0);
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let req = PageRequest::parse(2, &token).unwrap();
            let read = |after: Option<String>, limit: usize| {
                reads.set(reads.get() + 1);
                assert_eq!(limit, 3);
                let rest: Vec<String> = items
                    .iter()
                    .filter(|k| after.as_ref().is_none_or(|a| *k > a))
                    .cloned()
                    .collect();
                let chunk: Vec<String> = rest.iter().take(limit).cloned().collect();
                let last = chunk.last().cloned();
                async move { Ok::<_, ()>((chunk, last, rest.len() > limit)) }
            };
            let even = |k: &String| k[1..].parse::<u32>().unwrap() % 2 == 0;
            let matched = req.gather(read, even).await.unwrap();
            let (page, next) = req.paginate(matched, |s| s.clone());
            seen.extend(page);
            if next.is_empty() {
                break;
            }
            token = next;
        }
        let evens: Vec<String> = items.iter().step_by(2).cloned().collect();
        assert_eq!(seen, evens);
        assert!(reads.get() < 25, "{} reads", reads.get());
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
