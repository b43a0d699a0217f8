//! Rate limits on what an attacker can repeat cheaply: websocket upgrades (per source
//! address and per device), invite previews, redemptions and device links (per source
//! address), and wrong credentials (per source address). A refused call gets 429 with
//! `Retry-After` in seconds.
//!
//! The limits are GCRA buckets from `governor`, one keyed store per limit. Keys are source
//! addresses (an IPv6 address counts by its /64, which one host or home usually holds
//! whole) or device identities; [`Limiters::housekeeping`] drops keys whose bucket has
//! refilled, and a store that still holds [`MAX_KEYS`] keys sends every new address to one
//! shared bucket, so a spray of addresses costs bounded memory.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Keys one limit keeps before new addresses share a single bucket: 100,000 (a few MB).
/// Far more sources than a community relay sees in a bucket's refill time; past it the
/// relay is being sprayed and lumping new addresses together is the safe answer.
pub const MAX_KEYS: usize = 100_000;

/// How often idle keys are dropped: every 60 s.
pub const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// One limit: a burst, then one more every `interval`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Calls allowed at once.
    pub burst: u32,
    /// Time for one more call to be allowed.
    pub interval: Duration,
}

impl Rate {
    fn quota(self) -> Quota {
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(self.interval.max(Duration::from_millis(1)))
            .expect("a non-zero period")
            .allow_burst(burst)
    }
}

/// Every rate limit of the relay (see the `serve` flags for the defaults and why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// Websocket upgrades per source address.
    pub upgrades_per_address: Rate,
    /// Websocket upgrades per device.
    pub upgrades_per_device: Rate,
    /// Invite previews, redemptions and device links per source address.
    pub invites_per_address: Rate,
    /// Wrong credentials per source address; past it even a good one gets 429 until the
    /// bucket refills.
    pub failed_credentials: Rate,
}

/// Which limit refused a call: the `limit` label of `cairn_rate_limited_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Upgrades per source address.
    UpgradesPerAddress,
    /// Upgrades per device.
    UpgradesPerDevice,
    /// Invite and link calls per source address.
    InvitesPerAddress,
    /// Wrong credentials per source address.
    FailedCredentials,
}

impl Limit {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Limit::UpgradesPerAddress => "upgrades_per_address",
            Limit::UpgradesPerDevice => "upgrades_per_device",
            Limit::InvitesPerAddress => "invites_per_address",
            Limit::FailedCredentials => "failed_credentials",
        }
    }
}

/// A refused call: which limit, and how long until it would pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// The limit.
    pub limit: Limit,
    /// Whole seconds to wait (at least 1): the `Retry-After` value.
    pub retry_after_secs: u64,
}

/// One keyed limit with a bound on its keys.
struct Keyed<K: std::hash::Hash + Eq + Clone> {
    limiter: DefaultKeyedRateLimiter<K>,
    overflow: K,
    limit: Limit,
}

impl<K: std::hash::Hash + Eq + Clone> Keyed<K> {
    fn new(rate: Rate, overflow: K, limit: Limit) -> Self {
        Keyed {
            limiter: DefaultKeyedRateLimiter::hashmap(rate.quota()),
            overflow,
            limit,
        }
    }

    fn check(&self, key: &K) -> Result<(), Limited> {
        let key = if self.limiter.len() >= MAX_KEYS {
            &self.overflow
        } else {
            key
        };
        self.limiter.check_key(key).map_err(|not_until| Limited {
            limit: self.limit,
            retry_after_secs: retry_secs(not_until.wait_time_from(DefaultClock::default().now())),
        })
    }

    fn housekeeping(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

fn retry_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

/// The relay's rate limiters.
pub struct Limiters {
    upgrades_per_address: Keyed<IpAddr>,
    upgrades_per_device: Keyed<String>,
    invites_per_address: Keyed<IpAddr>,
    failed_credentials: Keyed<IpAddr>,
    /// Sources whose wrong credentials used up their bucket, and until when they are
    /// refused outright (governor cannot look at a bucket without taking from it).
    blocked: Mutex<HashMap<IpAddr, std::time::Instant>>,
}

impl std::fmt::Debug for Limiters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiters")
            .field(
                "upgrade_addresses",
                &self.upgrades_per_address.limiter.len(),
            )
            .field("upgrade_devices", &self.upgrades_per_device.limiter.len())
            .field("invite_addresses", &self.invites_per_address.limiter.len())
            .field("failing_addresses", &self.failed_credentials.limiter.len())
            .finish()
    }
}

/// The key all addresses share once a limit holds [`MAX_KEYS`] keys.
const OVERFLOW_ADDRESS: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

impl Limiters {
    /// Limiters with these rates.
    pub fn new(rates: &RateLimits) -> Self {
        Limiters {
            upgrades_per_address: Keyed::new(
                rates.upgrades_per_address,
                OVERFLOW_ADDRESS,
                Limit::UpgradesPerAddress,
            ),
            upgrades_per_device: Keyed::new(
                rates.upgrades_per_device,
                String::new(),
                Limit::UpgradesPerDevice,
            ),
            invites_per_address: Keyed::new(
                rates.invites_per_address,
                OVERFLOW_ADDRESS,
                Limit::InvitesPerAddress,
            ),
            failed_credentials: Keyed::new(
                rates.failed_credentials,
                OVERFLOW_ADDRESS,
                Limit::FailedCredentials,
            ),
            blocked: Mutex::new(HashMap::new()),
        }
    }

    /// One upgrade from `source`.
    pub fn upgrade_from(&self, source: IpAddr) -> Result<(), Limited> {
        self.upgrades_per_address.check(&rate_key(source))
    }

    /// One upgrade by the device `peer_id`.
    pub fn upgrade_by(&self, peer_id: &str) -> Result<(), Limited> {
        self.upgrades_per_device.check(&peer_id.to_owned())
    }

    /// One invite preview, redemption or device link from `source`.
    pub fn invite_from(&self, source: IpAddr) -> Result<(), Limited> {
        self.invites_per_address.check(&rate_key(source))
    }

    /// Whether `source` is refused for having sent too many wrong credentials.
    pub fn blocked(&self, source: IpAddr) -> Result<(), Limited> {
        let key = rate_key(source);
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        match blocked.get(&key) {
            Some(until) if *until > now => Err(Limited {
                limit: Limit::FailedCredentials,
                retry_after_secs: retry_secs(*until - now),
            }),
            Some(_) => {
                blocked.remove(&key);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Counts a wrong credential from `source`; past the limit the source is refused
    /// (even with a good credential) until its bucket refills.
    pub fn failed_from(&self, source: IpAddr) -> Result<(), Limited> {
        let key = rate_key(source);
        let refused = self.failed_credentials.check(&key);
        if let Err(limited) = refused {
            let until = std::time::Instant::now() + Duration::from_secs(limited.retry_after_secs);
            let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
            if blocked.len() >= MAX_KEYS {
                let now = std::time::Instant::now();
                blocked.retain(|_, t| *t > now);
            }
            if blocked.len() < MAX_KEYS {
                blocked.insert(key, until);
            }
        }
        refused
    }

    /// Drops keys whose buckets are full again (run every [`HOUSEKEEPING_EVERY`]).
    pub fn housekeeping(&self) {
        self.upgrades_per_address.housekeeping();
        self.upgrades_per_device.housekeeping();
        self.invites_per_address.housekeeping();
        self.failed_credentials.housekeeping();
        let now = std::time::Instant::now();
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        blocked.retain(|_, t| *t > now);
        blocked.shrink_to_fit();
    }
}

/// The key an address is limited by: IPv4 addresses (and IPv4-mapped IPv6) as they are,
/// IPv6 by their /64 prefix (one host or home holds a whole /64 and could otherwise draw
/// a fresh address for every call).
pub fn rate_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// The address a request comes from: the TCP peer, or, when the TCP peer is one of
/// `trusted_proxies`, the last hop of `X-Forwarded-For` (the one that proxy added; any
/// earlier hops were written by the client and prove nothing). `None` peer (a router
/// served without the relay's accept loop) counts as the unspecified address.
pub fn source_address(
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
    trusted_proxies: &[IpAddr],
) -> IpAddr {
    let Some(peer) = peer else {
        return IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    };
    let peer_ip = rate_key_canonical(peer.ip());
    if !trusted_proxies.contains(&peer_ip) {
        return peer_ip;
    }
    let last_hop = headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(str::trim);
    match last_hop.and_then(parse_hop) {
        Some(ip) => rate_key_canonical(ip),
        None => {
            tracing::debug!(
                "a trusted proxy sent no usable X-Forwarded-For; limiting by the proxy's address"
            );
            peer_ip
        }
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 form (a dual-stack listener reports them so).
fn rate_key_canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

/// One `X-Forwarded-For` hop: an address, or an address with a port (`1.2.3.4:5`,
/// `[::1]:5`), which some proxies write.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(burst: u32, secs: u64) -> Rate {
        Rate {
            burst,
            interval: Duration::from_secs(secs),
        }
    }

    fn limiters() -> Limiters {
        Limiters::new(&RateLimits {
            upgrades_per_address: rate(3, 60),
            upgrades_per_device: rate(2, 60),
            invites_per_address: rate(2, 30),
            failed_credentials: rate(2, 10),
        })
    }

    #[test]
    fn a_burst_passes_then_calls_are_refused_with_a_retry_time() {
        let l = limiters();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            l.upgrade_from(a).unwrap();
        }
        let refused = l.upgrade_from(a).unwrap_err();
        assert_eq!(refused.limit, Limit::UpgradesPerAddress);
        assert!((1..=60).contains(&refused.retry_after_secs));
        // Another address has its own bucket.
        l.upgrade_from(b).unwrap();
    }

    #[test]
    fn wrong_credentials_block_the_source_even_for_good_ones() {
        let l = limiters();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        l.blocked(a).unwrap();
        l.failed_from(a).unwrap();
        l.failed_from(a).unwrap();
        assert!(
            l.blocked(a).is_ok(),
            "not blocked before the bucket is empty"
        );
        assert_eq!(
            l.failed_from(a).unwrap_err().limit,
            Limit::FailedCredentials
        );
        let blocked = l.blocked(a).unwrap_err();
        assert!((1..=10).contains(&blocked.retry_after_secs));
        assert!(l.blocked("192.0.2.9".parse().unwrap()).is_ok());
    }

    #[test]
    fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(rate_key(a), rate_key(b));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(rate_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxy: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let other: SocketAddr = "198.51.100.3:4000".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.append(
            "x-forwarded-for",
            "203.0.113.66, 192.0.2.5".parse().unwrap(),
        );
        let trusted = ["10.0.0.1".parse().unwrap()];
        assert_eq!(
            source_address(Some(proxy), &headers, &trusted),
            "192.0.2.5".parse::<IpAddr>().unwrap(),
            "the hop the proxy added, not the client's own claim"
        );
        assert_eq!(
            source_address(Some(other), &headers, &trusted),
            other.ip(),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            source_address(Some(proxy), &HeaderMap::new(), &trusted),
            proxy.ip()
        );
        let mut ported = HeaderMap::new();
        ported.append("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(
            source_address(Some(proxy), &ported, &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}
