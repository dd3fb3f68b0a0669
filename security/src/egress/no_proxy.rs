//! The destinations reached directly although a proxy is set: the `NO_PROXY` convention
//! (curl, Go, Python), read from the environment or from the node's `no_proxy` setting.
//!
//! An entry is `*` (everything), a host name or domain (`idp.example.org`, `.example.org`,
//! `*.example.org`: the name itself and every name below it), an IP address (`10.1.2.3`,
//! `::1`, `[::1]`) or a network (`10.0.0.0/8`), each optionally with `:port`. Names compare
//! without regard to case.

use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    All,
    /// A host or domain name in lower case, without leading or trailing dot.
    Name(String),
    Ip(IpAddr),
    Network {
        address: IpAddr,
        prefix: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    pattern: Pattern,
    port: Option<u16>,
}

/// A parsed `NO_PROXY` list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    entries: Vec<Entry>,
}

impl NoProxy {
    /// Parses entries; returns the list of the good ones and the entries that are none of
    /// the forms above (for the caller to refuse or to warn about).
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> (Self, Vec<String>) {
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        for item in items.into_iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
            match parse_entry(item) {
                Some(entry) => entries.push(entry),
                None => bad.push(item.to_string()),
            }
        }
        (Self { entries }, bad)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `host` (a name or an IP address, IPv6 with or without brackets) at `port` is
    /// to be reached directly.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']').trim_end_matches('.').to_ascii_lowercase();
        let ip: Option<IpAddr> = host.parse().ok();
        self.entries.iter().any(|entry| {
            entry.port.is_none_or(|p| p == port)
                && match &entry.pattern {
                    Pattern::All => true,
                    Pattern::Name(name) => {
                        host == *name
                            || (ip.is_none()
                                && host.len() > name.len()
                                && host.ends_with(name.as_str())
                                && host.as_bytes()[host.len() - name.len() - 1] == b'.')
                    }
                    Pattern::Ip(address) => ip.as_ref() == Some(address),
                    Pattern::Network { address, prefix } => ip.is_some_and(|ip| in_network(ip, *address, *prefix)),
                }
        })
    }
}

fn parse_entry(item: &str) -> Option<Entry> {
    if item == "*" {
        return Some(Entry { pattern: Pattern::All, port: None });
    }
    // `[v6]` or `[v6]:port`
    if let Some(rest) = item.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?.parse().ok()?),
        };
        return Some(Entry { pattern: Pattern::Ip(address.parse::<std::net::Ipv6Addr>().ok()?.into()), port });
    }
    if let Some((address, prefix)) = item.split_once('/') {
        let address: IpAddr = address.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        return (prefix <= bits).then_some(Entry { pattern: Pattern::Network { address, prefix }, port: None });
    }
    // A bare IPv6 address has colons of its own: try the whole entry as an address first.
    if let Ok(address) = item.parse::<IpAddr>() {
        return Some(Entry { pattern: Pattern::Ip(address), port: None });
    }
    let (host, port) = match item.rsplit_once(':') {
        Some((host, port)) => (host, Some(port.parse::<u16>().ok()?)),
        None => (item, None),
    };
    if let Ok(address) = host.parse::<IpAddr>() {
        return Some(Entry { pattern: Pattern::Ip(address), port });
    }
    let name = host.strip_prefix("*.").or_else(|| host.strip_prefix('.')).unwrap_or(host);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(Entry { pattern: Pattern::Name(name), port })
}

fn in_network(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> NoProxy {
        let (list, bad) = NoProxy::parse([text]);
        assert!(bad.is_empty(), "{bad:?}");
        list
    }

    #[test]
    fn names_match_themselves_and_their_subdomains_in_any_case() {
        let l = list("idp.example.org, .Intern.KLINIK.de,*.lab.local");
        assert!(l.matches("idp.example.org", 443));
        assert!(l.matches("IDP.Example.Org.", 443));
        assert!(!l.matches("evilidp.example.org", 443));
        assert!(!l.matches("example.org", 443));
        assert!(l.matches("intern.klinik.de", 443));
        assert!(l.matches("keycloak.intern.klinik.de", 8443));
        assert!(!l.matches("xintern.klinik.de", 443));
        assert!(l.matches("a.b.lab.local", 1));
        assert!(l.matches("lab.local", 1));
        assert!(!l.matches("coordinator.example.org", 7070));
    }

    #[test]
    fn addresses_networks_ports_and_the_wildcard() {
        let l = list("127.0.0.1,10.0.0.0/8, ::1, [fd00::7]:7070, coordinator.local:7070, 192.168.1.5:443");
        assert!(l.matches("127.0.0.1", 7070));
        assert!(!l.matches("127.0.0.2", 7070));
        assert!(l.matches("10.200.3.4", 1));
        assert!(!l.matches("11.0.0.1", 1));
        assert!(l.matches("[::1]", 443) && l.matches("::1", 443));
        assert!(l.matches("[fd00::7]", 7070) && !l.matches("[fd00::7]", 443));
        assert!(l.matches("coordinator.local", 7070) && !l.matches("coordinator.local", 443));
        assert!(l.matches("192.168.1.5", 443) && !l.matches("192.168.1.5", 80));
        assert!(!list("0.0.0.0/0").matches("::1", 1), "an IPv4 network holds no IPv6 address");
        assert!(list("0.0.0.0/0").matches("8.8.8.8", 1));
        assert!(list("fd00::/8").matches("[fd12::1]", 1));
        assert!(list("*").matches("anything.example", 1));
        assert!(!NoProxy::default().matches("anything.example", 1));
    }

    #[test]
    fn entries_that_are_none_of_the_forms_are_set_apart() {
        let (l, bad) = NoProxy::parse(["<local>, ok.example, 10.0.0.0/33, host:port, a..b,", " "]);
        assert_eq!(bad, vec!["<local>", "10.0.0.0/33", "host:port", "a..b"]);
        assert!(l.matches("ok.example", 443));
    }
}
