//! Where a workflow's `http.request` may go: the SSRF guard.
//!
//! A node runs workflows written by people it does not fully trust, and it
//! sits inside a network: next to its own API, the database, the cloud's
//! metadata service (`169.254.169.254`). By default an action may reach
//! only public addresses. Loopback, link-local (metadata included), private,
//! shared (CGNAT), unique-local, multicast, unspecified, broadcast and
//! reserved destinations are refused unless the operator allows them
//! (`http.allow`: networks in CIDR form, addresses, or host names).
//!
//! The check is made on the *resolved* address, inside the HTTP client's
//! resolver ([`GuardedResolver`]), so the address that is checked is the one
//! connected to: a name that resolves to a public address when validated and
//! to a private one when sent (DNS rebinding) is refused at connect time. A
//! URL with an IP literal never reaches a resolver, so it is checked before
//! sending and on every redirect ([`EgressPolicy::redirect_policy`]).
//! Proxies from the environment are not used: a proxy would resolve the
//! name itself, out of our sight.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use ipnet::IpNet;

/// Why a destination was refused: the action fails without retry and says
/// so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub host: String,
    pub reason: &'static str,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "destination {} refused: {} address (allow it with http.allow in the node's configuration)",
            self.host, self.reason
        )
    }
}

impl std::error::Error for Refusal {}

/// The operator's allow-list and the built-in refusals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    nets: Vec<IpNet>,
    hosts: Vec<String>,
}

impl EgressPolicy {
    /// Refuses every internal destination (the default of `sojourn serve`).
    pub fn strict() -> EgressPolicy {
        EgressPolicy::default()
    }

    /// Allows loopback too (`sojourn dev`, tests against local sinks).
    pub fn allowing_loopback() -> EgressPolicy {
        EgressPolicy::parse(["127.0.0.0/8", "::1/128", "localhost"]).unwrap_or_default()
    }

    /// Parses allow-list entries: `10.0.0.0/8`, `192.168.1.20`, `::1/128`
    /// or a host name (`crm.internal`), which allows whatever it resolves
    /// to.
    pub fn parse<I, S>(entries: I) -> Result<EgressPolicy, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut policy = EgressPolicy::default();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            if let Ok(net) = IpNet::from_str(entry) {
                policy.nets.push(net.trunc());
            } else if let Ok(ip) = IpAddr::from_str(entry) {
                policy.nets.push(IpNet::from(ip));
            } else if entry.contains('/') {
                return Err(format!("{entry:?} is not a network like 10.0.0.0/8"));
            } else if is_host_name(entry) {
                policy.hosts.push(entry.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "{entry:?} is neither a network, an address nor a host name"
                ));
            }
        }
        Ok(policy)
    }

    /// The allow-list, as written in a configuration.
    pub fn entries(&self) -> Vec<String> {
        self.nets
            .iter()
            .map(ToString::to_string)
            .chain(self.hosts.iter().cloned())
            .collect()
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// Checks an address; `host` names it in the refusal.
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        match internal(ip) {
            Some(reason) if !self.nets.iter().any(|n| n.contains(&ip)) => Err(Refusal {
                host: host.to_owned(),
                reason,
            }),
            _ => Ok(()),
        }
    }

    /// Checks a URL before it is sent (or followed): the scheme, and the
    /// host when it is an address (names are checked when resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refusal> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal {
                host: url.as_str().chars().take(100).collect(),
                reason: "non-HTTP",
            });
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(&ip.to_string(), IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(&ip.to_string(), IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => Ok(()),
            None => Err(Refusal {
                host: url.as_str().chars().take(100).collect(),
                reason: "host-less",
            }),
        }
    }

    /// A redirect policy that checks every hop (at most 10).
    pub fn redirect_policy(self: &Arc<Self>) -> reqwest::redirect::Policy {
        let policy = self.clone();
        reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects (10)");
            }
            match policy.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        })
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Why an address is internal, or `None` for a public one.
pub fn internal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => internal_v6(v6),
    }
}

fn internal_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        Some("reserved")
    } else {
        None
    }
}

fn internal_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return internal_v4(v4);
    }
    let s = ip.segments();
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unicast_link_local() || (s[0] & 0xffc0) == 0xfec0 {
        Some("link-local")
    } else if ip.is_unique_local() {
        Some("unique-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if s[0..6] == [0, 0, 0, 0, 0xffff, 0] {
        // IPv4-translated (::ffff:0:a.b.c.d).
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        internal_v4(Ipv4Addr::new(a, b, c, d))
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // Local-use NAT64 (64:ff9b:1::/48) reaches a site's own IPv4.
        Some("reserved")
    } else if s[0] == 0x2001 && (s[1] == 0 || s[1] == 0xdb8) {
        // Teredo (2001::/32) tunnels to anywhere; 2001:db8::/32 is for
        // documentation.
        Some("reserved")
    } else if s[0] == 0x2002 {
        // 6to4 carries an IPv4 address in its second and third segments.
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        internal_v4(Ipv4Addr::new(a, b, c, d))
    } else if s[0] == 0x64 && s[1] == 0xff9b {
        // NAT64: the last 32 bits are an IPv4 address.
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        internal_v4(Ipv4Addr::new(a, b, c, d))
    } else if s[0..6] == [0, 0, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) addresses.
        Some("reserved")
    } else {
        None
    }
}

/// The HTTP client's resolver: resolves with the system's resolver and
/// keeps only addresses the policy allows.
#[derive(Debug)]
pub struct GuardedResolver {
    pub policy: Arc<EgressPolicy>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if policy.host_allowed(&host) {
                return Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs);
            }
            let mut refusal = None;
            let allowed: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match policy.check_ip(&host, a.ip()) {
                    Ok(()) => true,
                    Err(r) => {
                        refusal.get_or_insert(Refusal {
                            host: format!("{host} ({})", a.ip()),
                            reason: r.reason,
                        });
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), refusal) {
                (true, Some(refusal)) => Err(Box::new(refusal) as _),
                _ => Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs),
            }
        })
    }
}

/// The refusal behind a failed request, if the guard made it fail.
pub fn refusal_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refusal> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(r) = e.downcast_ref::<Refusal>() {
            return Some(r);
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn internal_destinations_are_named() {
        for (addr, reason) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("2002:a00:1::", "private"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("::ffff:0:7f00:1", "loopback"),
            ("64:ff9b:1::a00:1", "reserved"),
            ("2001:0:4136:e378::1", "reserved"),
            ("2001:db8::1", "reserved"),
        ] {
            assert_eq!(internal(ip(addr)), Some(reason), "{addr}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert_eq!(internal(ip(public)), None, "{public}");
        }
    }

    #[test]
    fn the_allow_list_opens_what_it_names() {
        let policy =
            EgressPolicy::parse(["10.0.0.0/8", "192.168.1.20", "crm.internal"]).expect("parses");
        assert!(policy.check_ip("x", ip("10.9.9.9")).is_ok());
        assert!(policy.check_ip("x", ip("192.168.1.20")).is_ok());
        assert!(policy.check_ip("x", ip("192.168.1.21")).is_err());
        assert!(policy.check_ip("x", ip("127.0.0.1")).is_err());
        assert!(policy.host_allowed("CRM.internal."));
        assert!(EgressPolicy::parse(["10.0.0.0/99"]).is_err());
        assert!(EgressPolicy::parse(["not a host"]).is_err());
        let strict = EgressPolicy::strict();
        let url = |s: &str| reqwest::Url::parse(s).expect("url");
        assert!(
            strict
                .check_url(&url("http://169.254.169.254/latest"))
                .is_err()
        );
        assert!(strict.check_url(&url("http://[::1]:8080/")).is_err());
        assert!(strict.check_url(&url("ftp://example.com/")).is_err());
        assert!(strict.check_url(&url("https://example.com/")).is_ok());
        assert!(
            EgressPolicy::allowing_loopback()
                .check_url(&url("http://127.0.0.1:9/"))
                .is_ok()
        );
    }
}
