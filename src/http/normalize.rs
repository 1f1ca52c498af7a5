//! `/api/v1/environments/` and `/api/v1//environments` are served as
//! `/api/v1/environments`, without a redirect (the app does not follow a redirected
//! POST). actix-web's `NormalizePath` does the same, but runs a regular expression
//! over every path; here a path that needs nothing (nearly all) costs one scan.

use actix_web::dev::ServiceRequest;
use actix_web::http::Uri;
use actix_web::http::uri::PathAndQuery;

/// The path without trailing slashes and with runs of slashes merged, if that
/// changes it.
fn normalized(path: &str) -> Option<String> {
    let trailing = path.len() > 1 && path.ends_with('/');
    if !trailing && !path.contains("//") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    Some(out)
}

/// Rewrites the request's path to its normal form (see [`normalized`]), before
/// routing.
pub fn normalize(req: &mut ServiceRequest) {
    let Some(path) = normalized(req.path()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    let path_and_query = match parts.path_and_query.as_ref().and_then(|pq| pq.query()) {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    // Made of a valid URI's path and query, minus some slashes: still valid.
    if let Ok(pq) = PathAndQuery::try_from(path_and_query) {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = Uri::from_parts(parts) {
            // Before routing: nothing has been matched against the old path.
            req.match_info_mut().get_mut().update(&uri);
            req.head_mut().uri = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::normalized;

    #[test]
    fn trims_trailing_slashes_and_merges_runs() {
        assert_eq!(normalized("/api/v1/environments"), None);
        assert_eq!(normalized("/"), None);
        assert_eq!(
            normalized("/api/v1/environments/").as_deref(),
            Some("/api/v1/environments")
        );
        assert_eq!(
            normalized("/api//v1///environments//").as_deref(),
            Some("/api/v1/environments")
        );
        assert_eq!(normalized("//").as_deref(), Some("/"));
    }
}
