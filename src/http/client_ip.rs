//! The client's address: the socket peer, unless that peer is a configured trusted
//! proxy, in which case the right-most `X-Forwarded-For` entry that is not itself a
//! trusted proxy. A forwarded header from anyone else changes nothing.

use std::net::IpAddr;

use actix_web::HttpRequest;

use crate::config::IpNet;

pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|part| part.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !is_trusted(*ip))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let req = TestRequest::default()
            .peer_addr("203.0.113.9:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "1.2.3.4"))
            .to_http_request();
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(&req, &trusted), Some(ip("203.0.113.9")));
    }

    #[test]
    fn trusted_proxy_chain_yields_rightmost_untrusted() {
        let req = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().expect("addr"))
            .insert_header(("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.3"))
            .to_http_request();
        let trusted = ["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(&req, &trusted), Some(ip("198.51.100.7")));
    }
}
