//! Who a request comes from, for every per-client bound (upload slots, open resumable uploads
//! and their bytes, event streams, long-polls, the creation rate, connections chosen for
//! eviction).
//!
//! A client is its API key (`crate::keys`) when it presents one: every request with the key is
//! the same client, from any address. Without keys, a client is its address: an IPv4 address, or
//! the /64 of an IPv6 address (one host owns a whole /64, and can pick a new address in it for
//! every request); an IPv4 address mapped into IPv6 counts as the IPv4 address. Behind a proxy
//! listed in `TRUSTED_PROXIES` the address is the one the proxy forwarded (`crate::forwarded`).
//!
//! The server loop puts the [`ClientId`] of each connection's peer (and the peer's [`Peer`]
//! address) into every request's extensions; the key check (`crate::routes::identify`) replaces it
//! with the key's or the forwarded address's. A handler takes it as `Option<ClientId>` (a request
//! that did not come through the server loop has none, and shares only the global bounds).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use axum::extract::OptionalFromRequestParts;
use axum::http::request::Parts;

/// The client a request is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientId {
    /// An anonymous client: its address (IPv6: its /64).
    Address(IpAddr),
    /// The client of one API key (`md5_api_keys.key_id`).
    Key(i64),
    /// Everyone who presents the shared `API_KEY`.
    SharedKey,
}

/// The address of a connection's peer, as the server loop saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer(pub IpAddr);

impl ClientId {
    /// The anonymous client at `addr`.
    pub fn from_peer(addr: IpAddr) -> Self {
        match addr.to_canonical() {
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                ClientId::Address(IpAddr::V6(Ipv6Addr::from(prefix)))
            }
            v4 => ClientId::Address(v4),
        }
    }
}

/// `203.0.113.7`, `2001:db8:1:2::/64`, `key:17` or `api-key`: the key the database's per-client
/// counts use.
impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientId::Address(IpAddr::V4(v4)) => write!(f, "{v4}"),
            ClientId::Address(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            ClientId::Key(id) => write!(f, "key:{id}"),
            ClientId::SharedKey => f.write_str("api-key"),
        }
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Option<Self>, Self::Rejection> {
        Ok(parts.extensions.get::<ClientId>().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(addr: &str) -> ClientId {
        ClientId::from_peer(addr.parse().unwrap())
    }

    #[test]
    fn an_ipv6_host_is_one_client_across_its_64_and_ipv4_is_its_address() {
        assert_eq!(id("2001:db8:1:2::1"), id("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(id("2001:db8:1:2::1"), id("2001:db8:1:3::1"));
        assert_eq!(id("2001:db8:1:2:abcd::9").to_string(), "2001:db8:1:2::/64");
        assert_eq!(id("::ffff:203.0.113.7"), id("203.0.113.7"));
        assert_eq!(id("203.0.113.7").to_string(), "203.0.113.7");
        assert_ne!(id("203.0.113.7"), id("203.0.113.8"));
        assert_eq!(ClientId::Key(17).to_string(), "key:17");
    }
}
