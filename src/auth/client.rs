//! Where a request comes from: the network address that per-address budgets count.

use std::fmt;
use std::net::IpAddr;

/// The address of the client behind a request, as the transport determined it (see
/// `http::client`). Sign-in budgets count per address, so a guesser cannot spend a whole
/// account's budget from many names, nor many accounts' from one place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientAddress(IpAddr);

impl ClientAddress {
    pub fn new(ip: IpAddr) -> Self {
        // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`.
        Self(ip.to_canonical())
    }

    pub fn ip(&self) -> IpAddr {
        self.0
    }

    /// The key a per-address budget counts under: the address for IPv4; for IPv6 its /64
    /// network, since one host commonly holds a whole /64 and could otherwise take a fresh
    /// address for every attempt.
    pub fn budget_key(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        }
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_counted_by_their_64_network() {
        let a = ClientAddress::new("2001:db8:1:2:aaaa::1".parse().expect("ip"));
        let b = ClientAddress::new("2001:db8:1:2:bbbb::7".parse().expect("ip"));
        let c = ClientAddress::new("2001:db8:1:3::1".parse().expect("ip"));
        assert_eq!(a.budget_key(), b.budget_key());
        assert_ne!(a.budget_key(), c.budget_key());
    }

    #[test]
    fn mapped_ipv4_is_the_ipv4_address() {
        let mapped = ClientAddress::new("::ffff:192.0.2.7".parse().expect("ip"));
        assert_eq!(mapped.budget_key(), "192.0.2.7");
        assert_eq!(mapped.to_string(), "192.0.2.7");
    }
}
