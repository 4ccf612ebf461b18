//! This API described in OpenAPI 3.1 (`admin-api/openapi.json`), served as is at
//! `/v1/openapi.json`. It lists exactly the routes of [`crate::routes`] (a test checks).

/// The document.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
