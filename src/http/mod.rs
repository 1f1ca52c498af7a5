//! HTTP plumbing shared by every route: request ids and request logging, the error
//! envelope for failures raised outside handlers, the JSON body extractor, and the
//! client address behind trusted proxies.

mod client_ip;
mod envelope;
pub mod json;
mod request_id;

pub use client_ip::client_ip;
pub use envelope::envelope_fallback;
pub use json::{Json, OptionalJson};
pub use request_id::{RequestId, request_context};
