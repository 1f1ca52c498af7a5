//! The HTTP server: where it listens, its workers, CORS origins, trusted proxies
//! (and the address blocks they are given as), and the largest JSON body.

use std::net::{IpAddr, SocketAddr};

use super::ConfigError;
use super::source::{Source, invalid};

#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    pub workers: usize,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    pub max_json_bytes: usize,
}

impl HttpSettings {
    pub(super) fn load(source: &Source, cpus: usize) -> Result<Self, ConfigError> {
        let listen = source.parse(
            "DEVPOCKET_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8000)),
            "an address such as 127.0.0.1:8000 or 0.0.0.0:8000",
        )?;
        let workers = source.parse("DEVPOCKET_WORKERS", cpus, "a whole number")?;
        if workers == 0 {
            return Err(invalid("DEVPOCKET_WORKERS", "must be at least 1"));
        }
        let allowed_origins = source
            .get("ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for origin in &allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "ALLOWED_ORIGINS",
                    format!("`{origin}` must be `*` or start with http:// or https://"),
                ));
            }
        }
        let trusted_proxies = source
            .get("DEVPOCKET_TRUSTED_PROXIES")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<IpNet>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|m| invalid("DEVPOCKET_TRUSTED_PROXIES", m))?
            .unwrap_or_default();
        let max_json_bytes = source.parse(
            "DEVPOCKET_MAX_JSON_BYTES",
            256 * 1024usize,
            "a number of bytes",
        )?;
        Ok(Self {
            listen,
            workers,
            allowed_origins,
            trusted_proxies,
            max_json_bytes,
        })
    }
}

/// A trusted reverse proxy: an address or a CIDR block. An IPv4 block also holds
/// the IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) a dual-stack socket reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.contains(&ip)
            || matches!(ip, IpAddr::V4(v4) if self.0.contains(&IpAddr::V6(v4.to_ipv6_mapped())))
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return s
                .trim()
                .parse::<IpAddr>()
                .map(|a| Self(a.into()))
                .map_err(|_| format!("`{s}` is not an IP address or CIDR block"));
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        prefix
            .trim()
            .parse::<u8>()
            .ok()
            .and_then(|p| ipnet::IpNet::new(addr, p).ok())
            .map(Self)
            .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let net: IpNet = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one: IpNet = "127.0.0.1".parse().expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
        // What a dual-stack socket reports for an IPv4 client.
        assert!(net.contains("::ffff:10.1.2.3".parse().expect("mapped")));
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().expect("mapped block");
        assert!(mapped.contains("10.9.9.9".parse().expect("ip")));
        let v6: IpNet = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8::1".parse().expect("ip")));
        assert!(!v6.contains("10.1.2.3".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("10.0.0.0/x".parse::<IpNet>().is_err());
        assert!("proxy.local".parse::<IpNet>().is_err());
    }
}
