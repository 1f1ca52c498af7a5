//! SSH sessions into a machine from outside DevPocket, as the machine itself sees
//! them: connections established to its SSH port from an address other than the
//! one DevPocket's own connection comes from. Where a provider lets users in with
//! keys of their own (`Provider::admits_outside_ssh`), an open one is activity for
//! the idle auto-stop.
//!
//! Read from `/proc/net/tcp` and `/proc/net/tcp6`, which every Linux machine has
//! (no tool an image may lack), filtered on the machine and bounded here in lines,
//! bytes and time. What a tenant prints instead can only keep its own machine up,
//! which an SSH session of its own does anyway.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use crate::deps::Deps;
use crate::model::{MachineAccess, MachineKeys};
use crate::ssh::{self, OnceError};

const TIMEOUT: Duration = Duration::from_secs(10);
/// A kernel table line is under 200 bytes; at most 512 of them are printed.
const MAX_BYTES: usize = 128 * 1024;

/// Prints the address this connection comes from (`$SSH_CONNECTION`'s first
/// field), then the kernel's established TCP connections whose local port is the
/// one this connection reached (its fourth field), as `/proc/net/tcp*` lines.
const COMMAND: &str = "set -- $SSH_CONNECTION; echo \"${1:-}\"; \
     port=$(printf '%04X' \"${4:-22}\"); \
     cat /proc/net/tcp /proc/net/tcp6 2>/dev/null \
     | grep -E \"^ *[0-9]+: [0-9A-F]+:$port [0-9A-F]+:[0-9A-F]{4} 01 \" | head -n 512";

/// The addresses with an SSH connection open to the machine, other than
/// DevPocket's own; empty when none is.
pub async fn look(
    deps: &Deps,
    machine: &MachineAccess,
    keys: &MachineKeys,
) -> Result<Vec<IpAddr>, OnceError> {
    let out = ssh::run_once(deps, "activity", machine, keys, COMMAND, TIMEOUT, MAX_BYTES).await?;
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// The peers in `out` (see `COMMAND`) other than its first line's address, each
/// once, in the order listed. Lines that are not connection lines are skipped;
/// without our own address nothing can be told apart, and none is returned.
fn parse(out: &str) -> Vec<IpAddr> {
    let mut lines = out.lines();
    let Some(ours) = lines.next().and_then(|l| l.trim().parse::<IpAddr>().ok()) else {
        return Vec::new();
    };
    let ours = ours.to_canonical();
    let mut outside = Vec::new();
    for line in lines {
        // "  3: LOCAL:PORT REMOTE:PORT 01 …"
        let peer = line
            .split_whitespace()
            .nth(2)
            .and_then(|field| field.split_once(':'))
            .and_then(|(address, _)| kernel_address(address));
        if let Some(peer) = peer.filter(|p| *p != ours && !outside.contains(p)) {
            outside.push(peer);
        }
    }
    outside
}

/// An address as `/proc/net/tcp*` prints it: 32-bit words in hexadecimal, each as
/// the machine stores it, which is little-endian on every machine we make
/// (x86-64, arm64).
fn kernel_address(hex: &str) -> Option<IpAddr> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let word = |i: usize| {
        u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16)
            .ok()
            .map(u32::to_le_bytes)
    };
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(0)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                chunk.copy_from_slice(&word(i)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)).to_canonical())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn other_peers_are_outside_and_ours_are_not() {
        // As a droplet at 203.0.113.7 prints it: two of our connections from
        // 198.51.100.1, one from 192.0.2.44, one over IPv6 from 2001:db8::5, and
        // one of ours seen as an IPv4-mapped IPv6 peer.
        let out = "198.51.100.1\n\
   0: 077100CB:0016 016433C6:D431 01 00000000:00000000 02:000A 00000000  1000 0 1 2 ...\n\
   1: 077100CB:0016 016433C6:D432 01 00000000:00000000 02:000A 00000000  1000 0 1 2 ...\n\
   2: 077100CB:0016 2C0200C0:C350 01 00000000:00000000 02:000A 00000000  1000 0 1 2 ...\n\
   3: 077100CB:0016 2C0200C0:C351 01 00000000:00000000 02:000A 00000000  1000 0 1 2 ...\n\
   0: 00000000000000000000000000000000:0016 B80D0120000000000000000005000000:E001 01 0 0\n\
   1: 00000000000000000000000000000000:0016 0000000000000000FFFF0000016433C6:E002 01 0 0\n";
        assert_eq!(parse(out), vec![ip("192.0.2.44"), ip("2001:db8::5")]);
    }

    #[test]
    fn only_our_connections_mean_no_outside_session() {
        let out = "127.0.0.1\n   7: 0500007F:0016 0100007F:A1B2 01 00000000:00000000\n";
        assert!(parse(out).is_empty());
        // Ours given as an IPv4-mapped IPv6 address is the same address.
        let out = "::ffff:127.0.0.1\n   7: 0500007F:0016 0100007F:A1B2 01 0\n";
        assert!(parse(out).is_empty());
    }

    #[test]
    fn what_a_tenant_prints_instead_is_never_a_panic() {
        for out in [
            "",
            "not an address\n   0: 0500007F:0016 0200007F:A1B2 01\n",
            "127.0.0.1\nrubbish\n: : :\n 0: x:y é:ü 01\n 0: a:b 0100007F 01\n",
            "127.0.0.1\n 0: 0500007F:0016 +100007F:1 01\n 0: l:p ÿÿÿÿÿÿÿÿ:1 01\n",
            "127.0.0.1\n 0: l:p 0000000000000000FFFF00000100007:1 01\n",
        ] {
            assert!(parse(out).is_empty(), "{out:?}");
        }
        assert_eq!(kernel_address("0100007F"), Some(ip("127.0.0.1")));
    }
}
