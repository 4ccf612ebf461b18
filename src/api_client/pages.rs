//! Listings that span pages: `GET` a list endpoint, follow `next_cursor`, and answer
//! in the API's own shape, as if everything had fit on one page.

use serde_json::Value;

use super::{encode_component, ApiClient, ApiError};

/// The API's largest page (`limit` is 1..=1000 on every list endpoint).
const MAX_PAGE: usize = 1000;

/// One list endpoint and what to ask of it.
#[derive(Debug)]
pub struct Listing<'a> {
    /// e.g. `/v1/audit-events`.
    pub path: &'a str,
    /// Filters, sent as given (percent-encoded); empty values are left out.
    pub query: Vec<(&'static str, String)>,
    /// The answer's array: `pools`, `tenants`, `events`.
    pub field: &'static str,
    /// Stop after this many items (the server's page size otherwise, to the end).
    pub max_items: Option<usize>,
}

impl Listing<'_> {
    /// The request for the page after `cursor`: `path?k=v&...&limit=&cursor=`.
    fn page_path(&self, cursor: Option<&str>, got: usize) -> String {
        let limit = self
            .max_items
            .map(|max| max.saturating_sub(got).clamp(1, MAX_PAGE).to_string());
        let pairs = self
            .query
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(limit.as_deref().map(|l| ("limit", l)))
            .chain(cursor.map(|c| ("cursor", c)));
        path_with_query(self.path, pairs)
    }
}

/// `path?k=v&...` with each value percent-encoded; pairs with empty values are left
/// out, and so is the `?` when none is left.
pub fn path_with_query<'v>(
    path: &str,
    pairs: impl IntoIterator<Item = (&'v str, &'v str)>,
) -> String {
    let query: Vec<String> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode_component(v)))
        .collect();
    if query.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", query.join("&"))
    }
}

impl ApiClient {
    /// Every page of `listing` (or the first `max_items` items) as
    /// `{field: [...], "next_cursor": c}`, where `c` is null when the listing ended and
    /// the cursor to go on from when `max_items` stopped it first.
    pub async fn get_all(&self, listing: &Listing<'_>) -> Result<Value, ApiError> {
        let mut items: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .get_json(&listing.page_path(cursor.as_deref(), items.len()))
                .await?;
            let got = page.get(listing.field).and_then(Value::as_array);
            items.extend(got.into_iter().flatten().cloned());
            let next = page
                .get("next_cursor")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let full = listing.max_items.is_some_and(|max| items.len() >= max);
            // A cursor that does not move would loop forever; the API never sends one.
            if next.is_none() || next == cursor || full {
                let mut answer = serde_json::Map::new();
                answer.insert(listing.field.to_owned(), Value::Array(items));
                answer.insert(
                    "next_cursor".to_owned(),
                    if full { next.into() } else { Value::Null },
                );
                return Ok(Value::Object(answer));
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_paths_carry_filters_limit_and_cursor_encoded() {
        let listing = Listing {
            path: "/v1/audit-events",
            query: vec![
                ("tenant", "acme".into()),
                ("action", String::new()),
                ("since", "2026-01-01T00:00:00Z".into()),
            ],
            field: "events",
            max_items: Some(2500),
        };
        assert_eq!(
            listing.page_path(None, 0),
            "/v1/audit-events?tenant=acme&since=2026-01-01T00%3A00%3A00Z&limit=1000"
        );
        assert_eq!(
            listing.page_path(Some("17"), 2000),
            "/v1/audit-events?tenant=acme&since=2026-01-01T00%3A00%3A00Z&limit=500&cursor=17"
        );
        let all = Listing {
            path: "/v1/tenants",
            query: Vec::new(),
            field: "tenants",
            max_items: None,
        };
        assert_eq!(all.page_path(None, 0), "/v1/tenants");
        assert_eq!(all.page_path(Some("a/b"), 5), "/v1/tenants?cursor=a%2Fb");
    }
}
