//! The client's address behind a reverse proxy: only when the peer is in `TRUSTED_PROXIES` are
//! `Forwarded` (RFC 7239) and `X-Forwarded-For` read, right to left, skipping the trusted hops;
//! the first untrusted address is the client. A client cannot claim another address: from an
//! untrusted peer the headers are ignored, and what a trusted proxy appended is read before
//! anything the client wrote.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The address the per-client bounds count `peer`'s request against.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |addr: &IpAddr| trusted.iter().any(|net| net.contains(&addr.to_canonical()));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = forwarded_for(headers).or_else(|| x_forwarded_for(headers)).unwrap_or_default();
    let mut client = peer;
    for hop in hops.iter().rev() {
        // A hop a proxy could not name (`unknown`, an obfuscated name, garbage): the nearest
        // address known is the client.
        let Some(addr) = hop else { break };
        client = *addr;
        if !is_trusted(addr) {
            break;
        }
    }
    client
}

/// The `for=` of every `Forwarded` element, in order (`None` where not an address).
fn forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for value in headers.get_all("forwarded") {
        let value = value.to_str().ok()?;
        for element in value.split(',') {
            let node = element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim().eq_ignore_ascii_case("for").then(|| value.trim().trim_matches('"'))
            });
            hops.push(node.and_then(parse_node));
        }
    }
    (!hops.is_empty()).then_some(hops)
}

/// A `Forwarded` node: `192.0.2.60`, `192.0.2.60:8080`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let host = node.split_once(':').map_or(node, |(host, _port)| host);
    host.parse().ok()
}

/// Every `X-Forwarded-For` address, in order.
fn x_forwarded_for(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let value = value.to_str().ok()?;
        hops.extend(value.split(',').map(|hop| {
            let hop = hop.trim();
            hop.parse().ok().or_else(|| parse_node(hop))
        }));
    }
    (!hops.is_empty()).then_some(hops)
}

/// A `TRUSTED_PROXIES` entry: a CIDR, or one address.
pub fn parse_trusted(value: &str) -> Result<IpNet, String> {
    let value = value.trim();
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{value:?} is neither an address nor a CIDR (like 10.0.0.0/8 or fd00::/8)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn address(peer: &str, headers: &[(&'static str, &str)]) -> String {
        let trusted = ["10.0.0.0/8", "fd00::/8"].map(|net| parse_trusted(net).unwrap());
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        client_address(peer.parse().unwrap(), &map, &trusted).to_string()
    }

    #[test]
    fn only_a_trusted_peer_is_believed_and_the_rightmost_untrusted_hop_is_the_client() {
        assert_eq!(address("203.0.113.9", &[("x-forwarded-for", "198.51.100.1")]), "203.0.113.9");
        assert_eq!(address("10.0.0.2", &[("x-forwarded-for", "198.51.100.1")]), "198.51.100.1");
        // The client wrote the first value; the proxies appended theirs.
        assert_eq!(
            address("10.0.0.2", &[("x-forwarded-for", "1.2.3.4, 198.51.100.1, 10.0.0.7")]),
            "198.51.100.1"
        );
        assert_eq!(
            address("10.0.0.2", &[("x-forwarded-for", "1.2.3.4"), ("x-forwarded-for", "198.51.100.1")]),
            "198.51.100.1"
        );
        assert_eq!(address("10.0.0.2", &[]), "10.0.0.2");
        assert_eq!(address("10.0.0.2", &[("x-forwarded-for", "garbage")]), "10.0.0.2");
        assert_eq!(address("::ffff:10.0.0.2", &[("x-forwarded-for", "198.51.100.1")]), "198.51.100.1");
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_its_nodes_may_have_ports_and_brackets() {
        let forwarded = [("forwarded", "for=1.2.3.4, for=\"[2001:db8::7]:4711\";proto=https")];
        assert_eq!(address("10.0.0.2", &forwarded), "2001:db8::7");
        let both = [("forwarded", "for=198.51.100.3:80"), ("x-forwarded-for", "1.2.3.4")];
        assert_eq!(address("fd00::1", &both), "198.51.100.3");
        assert_eq!(address("10.0.0.2", &[("forwarded", "for=unknown")]), "10.0.0.2");
        assert_eq!(address("10.0.0.2", &[("forwarded", "for=1.2.3.4, for=_hidden")]), "10.0.0.2");
    }

    #[test]
    fn a_trusted_entry_is_a_cidr_or_an_address() {
        assert_eq!(parse_trusted("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_trusted("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        assert!(parse_trusted("proxy.local").is_err());
    }
}
