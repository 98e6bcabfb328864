//! Request rates and connections per client address and per tenant (all off by default), and
//! the trusted-proxy rule that finds a request's real client behind a load balancer.
//!
//! A rate is a token bucket per key: `rate` tokens a second, at most two seconds' worth
//! banked (a burst), one token per request; an empty bucket answers `429` with the seconds
//! until the next token in `Retry-After`. Keys are bounded: past [`MAX_KEYS`] the buckets
//! that have refilled (idle ones) are forgotten, and if that is not enough, all are (failing
//! open is better than a table an attacker grows with spoofed addresses).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Keys (addresses, tenants) whose buckets are kept.
pub const MAX_KEYS: usize = 65_536;

/// A bucket per key.
pub struct Buckets<K> {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    /// `None` for a rate of 0 (off).
    pub fn new(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            rate: f64::from(per_second),
            burst: 2.0 * f64::from(per_second),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token of `key`'s; `Err` with how long until the next one when it has none.
    pub fn take(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= MAX_KEYS {
                buckets.clear();
            }
        }
        let (tokens, at) = buckets.entry(key.clone()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// An address or a network (`10.0.0.0/8`, `::1`), for `--trusted-proxies`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Net {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not an IP address or network (ADDR or ADDR/BITS)");
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits.parse::<u8>().map_err(|_| bad())?)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl Net {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let ip = match (self.addr, ip) {
            (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            _ => ip,
        };
        let ((net, width), (ip, _)) = (bits(self.addr), bits(ip));
        let shift = width - u32::from(self.prefix);
        shift >= width || (net >> shift) == (ip >> shift)
    }
}

/// The proxies whose word on a request's client is taken.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(pub Vec<Net>);

impl TrustedProxies {
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|net| net.contains(ip))
    }

    /// The client a request from `peer` came from: `peer` itself, unless it is a trusted
    /// proxy; then the nearest address of `X-Forwarded-For` (read right to left, as each proxy
    /// appends the one it saw) that is not a trusted proxy. What a client writes into the
    /// header itself sits left of that and is never taken.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.parse::<IpAddr>() else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The limits of one server: requests per client address and per tenant, connections per
/// client address.
pub struct Throttle {
    pub per_address: Option<Buckets<IpAddr>>,
    pub per_tenant: Option<Buckets<String>>,
    pub max_connections_per_address: usize,
    pub trusted: TrustedProxies,
    connections: Mutex<HashMap<IpAddr, usize>>,
}

impl Throttle {
    pub fn new(
        per_address: u32,
        per_tenant: u32,
        max_connections_per_address: usize,
        trusted: TrustedProxies,
    ) -> Self {
        Self {
            per_address: Buckets::new(per_address),
            per_tenant: Buckets::new(per_tenant),
            max_connections_per_address,
            trusted,
            connections: Mutex::default(),
        }
    }

    /// A request of `client`'s: `Err` with the wait when its address is over its rate.
    pub fn request(&self, client: IpAddr) -> Result<(), Duration> {
        match &self.per_address {
            Some(buckets) => buckets.take(&client),
            None => Ok(()),
        }
    }

    /// A request of `tenant`'s: `Err` with the wait when the tenant is over its rate.
    pub fn tenant(&self, tenant: &str) -> Result<(), Duration> {
        match &self.per_tenant {
            Some(buckets) => buckets.take(&tenant.to_string()),
            None => Ok(()),
        }
    }

    /// Counts a new connection from `peer`, `None` when the address has as many open as it
    /// may. A trusted proxy's connections carry many clients and are not counted.
    pub fn connect(self: &Arc<Self>, peer: IpAddr) -> Option<ConnectionSlot> {
        if self.max_connections_per_address == 0 || self.trusted.trusts(peer) {
            return Some(ConnectionSlot(None));
        }
        let mut open = self.connections.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(peer).or_default();
        if *count >= self.max_connections_per_address {
            return None;
        }
        *count += 1;
        Some(ConnectionSlot(Some((self.clone(), peer))))
    }
}

impl Default for Throttle {
    /// Nothing limited.
    fn default() -> Self {
        Self::new(0, 0, 0, TrustedProxies::default())
    }
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle")
            .field("per_address", &self.per_address.as_ref().map(|b| b.rate))
            .field("per_tenant", &self.per_tenant.as_ref().map(|b| b.rate))
            .field(
                "max_connections_per_address",
                &self.max_connections_per_address,
            )
            .field("trusted", &self.trusted)
            .finish()
    }
}

/// One counted connection; closing it (dropping this) gives its place back.
pub struct ConnectionSlot(Option<(Arc<Throttle>, IpAddr)>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some((throttle, peer)) = &self.0 {
            let mut open = throttle
                .connections
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = open.get_mut(peer) {
                *count -= 1;
                if *count == 0 {
                    open.remove(peer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let buckets = Buckets::new(5).unwrap();
        for _ in 0..10 {
            buckets.take(&"a").unwrap();
        }
        let wait = buckets.take(&"a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(200),
            "{wait:?}"
        );
        buckets.take(&"b").unwrap();
        assert!(Buckets::<u8>::new(0).is_none());
    }

    #[test]
    fn networks_contain_their_addresses() {
        let net: Net = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains(ip("10.1.2.3")) && !net.contains(ip("11.0.0.1")));
        let one: Net = "::1".parse().unwrap();
        assert!(one.contains(ip("::1")) && !one.contains(ip("::2")));
        let mapped: Net = "127.0.0.1".parse().unwrap();
        assert!(mapped.contains(ip("::ffff:127.0.0.1")));
        let all: Net = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        for bad in ["10.0.0.0/33", "proxy", "10.0.0.1/x"] {
            assert!(bad.parse::<Net>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_only_behind_a_trusted_proxy() {
        let trusted = TrustedProxies(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            "6.6.6.6, 203.0.113.7, 10.0.0.9".parse().unwrap(),
        );
        // Behind the balancer: the address it saw, not what the client wrote before it.
        assert_eq!(trusted.client(ip("10.0.0.2"), &headers), ip("203.0.113.7"));
        // Straight from a client: the header is the client's own word, ignored.
        assert_eq!(
            trusted.client(ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        assert_eq!(
            trusted.client(ip("10.0.0.2"), &HeaderMap::new()),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn connections_per_address_are_counted_and_given_back() {
        let trusted = TrustedProxies(vec!["10.0.0.1".parse().unwrap()]);
        let throttle = Arc::new(Throttle::new(0, 0, 2, trusted));
        let a = ip("192.0.2.1");
        let (one, two) = (throttle.connect(a).unwrap(), throttle.connect(a).unwrap());
        assert!(throttle.connect(a).is_none());
        assert!(throttle.connect(ip("192.0.2.2")).is_some());
        let proxy: Vec<_> = (0..5).map(|_| throttle.connect(ip("10.0.0.1"))).collect();
        assert!(
            proxy.iter().all(Option::is_some),
            "a trusted proxy is not counted"
        );
        drop(one);
        assert!(throttle.connect(a).is_some());
        drop(two);
    }
}
