//! Who is at the other end of a request: the peer's address, or behind a trusted proxy the
//! client's as the proxy wrote it in `X-Forwarded-For`. A header a client writes itself is
//! believed only when it comes through one of `TIDINGS_TRUSTED_PROXIES`; otherwise anyone
//! could claim any address and step around a per-address budget.
//!
//! The peer's address comes from axum's `ConnectInfo` (`App::serve` serves with it).
//! `remember_peer`, a middleware, keeps it for the request's handler, so code deep in a
//! handler (`socket::accept`, under every WebSocket endpoint) can ask for it without every
//! handler on the way taking it as an argument.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

/// A block of addresses, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` is in the block (an IPv4 address written as IPv6, `::ffff:a.b.c.d`, is
    /// the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
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
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network = addr
            .parse::<IpAddr>()
            .map_err(|_| format!("{s:?} is not an address or a CIDR block (10.0.0.0/8, ::1)"))?
            .to_canonical();
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The client's address: the peer's, unless the peer is a trusted proxy. Then it is the
/// nearest address in `X-Forwarded-For` (read from the right, as each proxy appends the one it
/// saw) that is not a trusted proxy itself; the leftmost when all of them are; the peer's when
/// the header is missing or unreadable.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> IpAddr {
    let peer = peer.to_canonical();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut forwarded = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for hop in value.split(',') {
            match forwarded_address(hop) {
                Some(ip) => forwarded.push(ip),
                None => return peer,
            }
        }
    }
    forwarded
        .iter()
        .rev()
        .find(|ip| !is_trusted(**ip))
        .or(forwarded.first())
        .copied()
        .unwrap_or(peer)
}

/// One hop of `X-Forwarded-For`: an address, or one with a port (`1.2.3.4:5`, `[::1]:5`).
fn forwarded_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// The part of an address that one client holds: the address itself for IPv4, its /64 for
/// IPv6 (one subscriber commonly gets a whole /64, so counting single IPv6 addresses would let
/// one client count as millions).
pub fn address_holder(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::MAX >> 64))),
        v4 => v4,
    }
}

tokio::task_local! {
    /// The peer of the request being handled, while `remember_peer` runs its handler.
    static PEER: Option<SocketAddr>;
}

/// Middleware: keeps the request's peer address (from `ConnectInfo`) for `peer` while the
/// handler of a WebSocket upgrade runs. Other requests pass untouched.
pub(crate) async fn remember_peer(request: Request, next: Next) -> Response {
    if !request.headers().contains_key(axum::http::header::UPGRADE) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    PEER.scope(peer, next.run(request)).await
}

/// The peer of the upgrade request being handled (see `remember_peer`); `None` when the
/// server was not served with connect info.
pub(crate) fn peer() -> Option<SocketAddr> {
    PEER.try_with(|p| *p).ok().flatten()
}

/// A handler takes `Option<crate::auth::ClientAddress>`: the client behind the request, as
/// `client_address` decides it (`None` when the server was not given peer addresses: a router
/// driven in-process, without a socket).
impl axum::extract::OptionalFromRequestParts<super::AppState> for crate::auth::ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &super::AppState,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| {
                Self::new(client_address(
                    peer.ip(),
                    &parts.headers,
                    &state.config.trusted_proxies,
                ))
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("a header"));
        headers
    }

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| c.parse().expect("a CIDR")).collect()
    }

    #[test]
    fn blocks_parse_and_contain_their_addresses() {
        let lan: Cidr = "10.0.0.0/8".parse().expect("valid");
        assert!(lan.contains(ip("10.200.3.4")));
        assert!(lan.contains(ip("::ffff:10.1.1.1")), "IPv4 written as IPv6");
        assert!(!lan.contains(ip("11.0.0.1")));
        let one: Cidr = "::1".parse().expect("valid");
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let all: Cidr = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")), "IPv4 blocks hold no IPv6");
        for bad in ["10.0.0.0/33", "::/129", "ten", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn forwarded_for_is_ignored_from_an_untrusted_peer() {
        let headers = forwarded("203.0.113.7");
        let trusted = cidrs(&["10.0.0.0/8"]);
        assert_eq!(
            client_address(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &headers, &[]),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let trusted = cidrs(&["10.0.0.0/8", "127.0.0.1"]);
        // The client claims an address; the first proxy appends the one it saw.
        let headers = forwarded("1.1.1.1, 203.0.113.7, 10.0.0.5");
        assert_eq!(
            client_address(ip("127.0.0.1"), &headers, &trusted),
            ip("203.0.113.7")
        );
        let only_proxies = forwarded("10.0.0.9, 10.0.0.5");
        assert_eq!(
            client_address(ip("10.0.0.1"), &only_proxies, &trusted),
            ip("10.0.0.9")
        );
        let with_port = forwarded("[2001:db8::5]:443");
        assert_eq!(
            client_address(ip("10.0.0.1"), &with_port, &trusted),
            ip("2001:db8::5")
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &forwarded("garbage"), &trusted),
            ip("10.0.0.1"),
            "an unreadable header is not believed"
        );
        assert_eq!(
            client_address(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn an_ipv6_client_holds_its_slash_64() {
        assert_eq!(
            address_holder(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(address_holder(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(address_holder(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
    }
}
