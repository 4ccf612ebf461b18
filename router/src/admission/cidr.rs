//! Address ranges in CIDR notation, and the per-tenant list of client ranges allowed
//! to connect.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with no host bits set and a prefix length.
///
/// Host bits are an error rather than silently masked, because `10.0.0.1/8` is far more
/// often a typo for `10.0.0.1/32` or `10.0.0.0/24` than a deliberate `10.0.0.0/8`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("invalid CIDR {0:?}: expected an IPv4 or IPv6 address with an optional /prefix, such as 10.0.0.0/8 or 2001:db8::/32")]
    Address(String),
    #[error("invalid CIDR {input:?}: the prefix must be /0 to /{max}")]
    Prefix { input: String, max: u8 },
    #[error("invalid CIDR {input:?}: host bits set; did you mean {suggestion}?")]
    HostBits { input: String, suggestion: Cidr },
}

impl Cidr {
    /// The network `addr/prefix`; refuses a prefix longer than the address or an
    /// address with host bits set.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        Self::checked(addr, u32::from(prefix), || format!("{addr}/{prefix}"))
    }

    /// `10.0.0.0/8`, `2001:db8::/32`, or a bare address meaning a single host (`/32`
    /// or `/128`). Surrounding whitespace is ignored.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let text = s.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError::Address(s.to_owned()))?;
        let prefix = match prefix {
            None => u32::from(max_prefix(addr)),
            // Digits only: `u32::from_str` would also take `+8`. Four digits are plenty
            // to say "too long" and cannot overflow.
            Some(p) if !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().unwrap_or(u32::MAX)
            }
            Some(_) => {
                return Err(CidrError::Prefix {
                    input: s.to_owned(),
                    max: max_prefix(addr),
                })
            }
        };
        Self::checked(addr, prefix, || s.to_owned())
    }

    fn checked(addr: IpAddr, prefix: u32, input: impl Fn() -> String) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > u32::from(max) {
            return Err(CidrError::Prefix {
                input: input(),
                max,
            });
        }
        // Fits: at most 128.
        let prefix = prefix as u8;
        let network = Cidr {
            addr: mask(addr, prefix),
            prefix,
        };
        if network.addr != addr {
            return Err(CidrError::HostBits {
                input: input(),
                suggestion: network,
            });
        }
        Ok(network)
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network. The client address is taken in canonical form,
    /// so an IPv4 client reached through a dual-stack socket (`::ffff:10.1.2.3`)
    /// matches IPv4 networks. An IPv4 client also matches the IPv6 networks holding
    /// its mapped form, so `::/0` admits everyone, as it would on a dual-stack socket.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(IpAddr::V4(ip), self.prefix) == IpAddr::V4(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(IpAddr::V6(ip), self.prefix) == IpAddr::V6(net)
            }
            (IpAddr::V6(net), IpAddr::V4(ip)) => {
                mask(IpAddr::V6(ip.to_ipv6_mapped()), self.prefix) == IpAddr::V6(net)
            }
            // Canonical IPv6 addresses are never IPv4-mapped, so they lie outside
            // every IPv4 network.
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with all but its first `prefix` bits cleared (`prefix` within range).
fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & keep).into())
        }
        IpAddr::V6(a) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

/// Always with the prefix (`192.168.1.7/32`), so it parses back to the same network.
impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cidr({self})")
    }
}

/// The client networks a tenant accepts connections from. Empty means everyone:
/// allow-lists are opt-in, and a tenant with none configured must keep working.
///
/// Lists are short (a handful of office and VPC ranges), so a linear scan beats any
/// index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    cidrs: Vec<Cidr>,
}

impl AllowList {
    pub fn new(cidrs: Vec<Cidr>) -> Self {
        AllowList { cidrs }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.cidrs.is_empty() || self.cidrs.iter().any(|c| c.contains(ip))
    }

    /// True if the list restricts nothing.
    pub fn allows_everyone(&self) -> bool {
        self.cidrs.is_empty()
    }

    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parses_both_families_and_bare_hosts() {
        let c = cidr("10.0.0.0/8");
        assert_eq!((c.addr(), c.prefix()), (ip("10.0.0.0"), 8));
        assert_eq!(cidr("192.168.1.7").prefix(), 32);
        assert_eq!(cidr("192.168.1.7").to_string(), "192.168.1.7/32");
        assert_eq!(cidr("::1/128"), cidr("::1"));
        assert_eq!(cidr("2001:db8::/32").to_string(), "2001:db8::/32");
        assert_eq!(cidr(" 0.0.0.0/0 ").prefix(), 0);
        assert_eq!(cidr("::/0").prefix(), 0);
        assert_eq!("10.0.0.0/08".parse::<Cidr>(), Ok(cidr("10.0.0.0/8")));
        assert_eq!(Cidr::new(ip("10.1.0.0"), 16).unwrap(), cidr("10.1.0.0/16"));
    }

    #[test]
    fn rejects_bad_prefixes_host_bits_and_garbage() {
        assert_eq!(
            Cidr::parse("10.0.0.1/8").unwrap_err().to_string(),
            "invalid CIDR \"10.0.0.1/8\": host bits set; did you mean 10.0.0.0/8?"
        );
        assert_eq!(
            Cidr::parse("2001:db8::1/32"),
            Err(CidrError::HostBits {
                input: "2001:db8::1/32".into(),
                suggestion: cidr("2001:db8::/32")
            })
        );
        assert_eq!(
            Cidr::parse("10.0.0.0/33"),
            Err(CidrError::Prefix {
                input: "10.0.0.0/33".into(),
                max: 32
            })
        );
        assert!(matches!(
            Cidr::parse("::/129"),
            Err(CidrError::Prefix { max: 128, .. })
        ));
        assert!(matches!(
            Cidr::new(ip("::"), 200),
            Err(CidrError::Prefix { max: 128, .. })
        ));
        for bad in [
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            "10.0.0.0/99999999999",
        ] {
            assert!(
                matches!(Cidr::parse(bad), Err(CidrError::Prefix { .. })),
                "{bad}"
            );
        }
        for bad in [
            "",
            "/8",
            "10.0.0/8",
            "10.0.0.256",
            "example.com",
            "fe80::1%eth0",
            "[::1]/128",
            "10.0.0.0 /8",
        ] {
            assert!(
                matches!(Cidr::parse(bad), Err(CidrError::Address(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn membership() {
        let net = cidr("10.0.0.0/8");
        assert!(net.contains(ip("10.0.0.0")));
        assert!(net.contains(ip("10.255.255.255")));
        assert!(!net.contains(ip("11.0.0.0")));
        assert!(!net.contains(ip("2001:db8::1")));
        // IPv4 clients seen through a dual-stack socket.
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::ffff:11.1.2.3")));
        // The deprecated IPv4-compatible form is not IPv4.
        assert!(!net.contains(ip("::10.1.2.3")));

        let v6 = cidr("2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));

        assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(cidr("0.0.0.0/0").contains(ip("::ffff:203.0.113.9")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        assert!(cidr("::/0").contains(ip("203.0.113.9")));
        assert!(cidr("::ffff:0.0.0.0/96").contains(ip("203.0.113.9")));
        assert!(cidr("192.168.1.7").contains(ip("192.168.1.7")));
        assert!(!cidr("192.168.1.7").contains(ip("192.168.1.8")));
        assert!(cidr("::1").contains(ip("::1")));
    }

    #[test]
    fn allow_lists() {
        let everyone = AllowList::default();
        assert!(everyone.allows_everyone());
        assert!(everyone.allows(ip("198.51.100.1")));
        assert!(everyone.allows(ip("::1")));

        let list = AllowList::new(vec![cidr("10.0.0.0/8"), cidr("2001:db8::/32")]);
        assert!(!list.allows_everyone());
        assert_eq!(list.cidrs().len(), 2);
        assert!(list.allows(ip("10.9.9.9")));
        assert!(list.allows(ip("::ffff:10.9.9.9")));
        assert!(list.allows(ip("2001:db8::5")));
        assert!(!list.allows(ip("192.168.0.1")));
        assert!(!list.allows(ip("::1")));
    }

    /// Any address as 128 bits: IPv4 in its IPv4-mapped IPv6 form.
    fn bits128(addr: IpAddr) -> u128 {
        match addr {
            IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Membership by comparing leading bits one at a time in the 128-bit space.
    fn naive_contains(net: Cidr, client: IpAddr) -> bool {
        let prefix = match net.addr() {
            IpAddr::V4(_) => u32::from(net.prefix()) + 96,
            IpAddr::V6(_) => u32::from(net.prefix()),
        };
        let (n, c) = (bits128(net.addr()), bits128(client));
        (0..prefix).all(|i| (n >> (127 - i)) & 1 == (c >> (127 - i)) & 1)
    }

    fn any_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
        ]
    }

    fn any_cidr() -> impl Strategy<Value = Cidr> {
        (any_addr(), any::<u8>()).prop_map(|(addr, p)| {
            let prefix = p % (max_prefix(addr) + 1);
            Cidr::new(mask(addr, prefix), prefix).unwrap()
        })
    }

    proptest! {
        #[test]
        fn display_round_trips(c in any_cidr()) {
            prop_assert_eq!(Cidr::parse(&c.to_string()), Ok(c));
        }

        #[test]
        fn contains_agrees_with_a_bitwise_check(
            c in any_cidr(),
            client in any_addr(),
            flip in 0u32..128,
        ) {
            prop_assert_eq!(c.contains(client), naive_contains(c, client));
            // Also clients near the network, where random addresses rarely land.
            let near = match c.addr() {
                IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ (1u32 << (flip % 32)))),
                IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ (1u128 << flip))),
            };
            prop_assert_eq!(c.contains(near), naive_contains(c, near));
            prop_assert!(c.contains(c.addr()));
        }

        #[test]
        fn parse_never_panics(s in ".{0,60}", t in "[0-9a-f:./]{0,45}") {
            let _ = Cidr::parse(&s);
            let _ = Cidr::parse(&t);
        }
    }
}
