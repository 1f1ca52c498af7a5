//! HTTP plumbing shared by every route: request ids and request logging, the error
//! envelope for failures raised outside handlers, the JSON body extractor, path
//! normalisation, and the client address behind trusted proxies.

mod client_ip;
mod envelope;
pub mod json;
mod normalize;
mod request_id;

pub use client_ip::client_ip;
pub use envelope::envelope_fallback;
pub use json::{Json, OptionalJson};
pub use normalize::normalize_path;
pub use request_id::{RequestId, request_context};
