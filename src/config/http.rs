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

/// A trusted reverse proxy: an address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(v4.into())),
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
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
    }
}
