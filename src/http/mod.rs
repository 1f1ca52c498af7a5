//! HTTP plumbing shared by every route: the edge (path normalisation, request ids,
//! the per-address limit, security headers, request metrics and logging), the error
//! envelope for failures raised outside handlers, the JSON body extractor, the
//! refusal of NUL characters, and the client address behind trusted proxies.

mod client_ip;
mod edge;
mod envelope;
pub mod json;
mod normalize;
mod nul;

pub use client_ip::client_ip;
pub use edge::{Edge, X_REQUEST_ID};
pub use envelope::envelope_fallback;
pub use json::{Json, OptionalJson};
