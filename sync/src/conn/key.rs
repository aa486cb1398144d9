//! Lookup keys: the forward key of a connection or template, and the key of a NAT reply.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::addr::{Family, ip_to_raw, mask_prefix, raw_to_ip, v4_bytes};
use super::state::proto;

/// Bit of `ConnKey::meta` that marks a persistence template, so a template never collides with
/// a real connection that happens to have client port 0.
pub(crate) const META_TEMPLATE: u8 = 0x80;
const META_FAMILY: u8 = 0x0F;

/// Forward key: (L4 protocol, client addr:port, virtual addr:port), 38 bytes.
///
/// For fwmark services the virtual side is the packet's destination. Client and virtual
/// addresses always share one family (they are the two ends of one packet). Templates use
/// the same type (see [`ConnKey::template`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ConnKey {
    pub(crate) caddr: [u8; 16],
    pub(crate) vaddr: [u8; 16],
    pub(crate) cport: u16,
    pub(crate) vport: u16,
    pub(crate) proto: u8,
    /// Family tag (4 or 6) | `META_TEMPLATE`. 0 marks a free slot inside the table.
    pub(crate) meta: u8,
}

/// What a persistence template is keyed on besides the masked client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateTarget {
    /// A (protocol, VIP, port) service; port 0 for "any port" services.
    Virtual(SocketAddr),
    /// A firewall-mark service: IPVS keys these as `<IPPROTO_IP, caddr, 0, fwmark, 0>`.
    Fwmark(u32),
}

impl ConnKey {
    /// Key of a connection; `None` if client and virtual addresses are of different families.
    pub fn new(protocol: u8, client: SocketAddr, virt: SocketAddr) -> Option<ConnKey> {
        let (cf, caddr) = ip_to_raw(client.ip());
        let (vf, vaddr) = ip_to_raw(virt.ip());
        if cf != vf {
            return None;
        }
        Some(ConnKey {
            caddr,
            vaddr,
            cport: client.port(),
            vport: virt.port(),
            proto: protocol,
            meta: cf.tag(),
        })
    }

    /// IPv4 key from raw header fields (ports in host order); no `SocketAddr` round trip.
    pub const fn v4(protocol: u8, caddr: [u8; 4], cport: u16, vaddr: [u8; 4], vport: u16) -> Self {
        ConnKey {
            caddr: v4_bytes(caddr),
            vaddr: v4_bytes(vaddr),
            cport,
            vport,
            proto: protocol,
            meta: Family::V4.tag(),
        }
    }

    /// IPv6 key from raw header fields (ports in host order).
    pub const fn v6(
        protocol: u8,
        caddr: [u8; 16],
        cport: u16,
        vaddr: [u8; 16],
        vport: u16,
    ) -> Self {
        ConnKey {
            caddr,
            vaddr,
            cport,
            vport,
            proto: protocol,
            meta: Family::V6.tag(),
        }
    }

    /// Key from the raw fields a wire codec carries (IPv4 addresses in the first 4 bytes).
    pub fn from_raw(
        protocol: u8,
        family: Family,
        caddr: [u8; 16],
        cport: u16,
        vaddr: [u8; 16],
        vport: u16,
        template: bool,
    ) -> ConnKey {
        let (caddr, vaddr) = match family {
            // Normalise: bytes past an IPv4 address must be zero or equal keys would differ.
            Family::V4 => (
                mask_prefix(family, &caddr, 32),
                mask_prefix(family, &vaddr, 32),
            ),
            Family::V6 => (caddr, vaddr),
        };
        ConnKey {
            caddr,
            vaddr,
            cport,
            vport,
            proto: protocol,
            meta: family.tag() | if template { META_TEMPLATE } else { 0 },
        }
    }

    /// Key of a persistence template, laid out as IPVS's `ip_vs_sched_persist` does:
    /// `<protocol, client/prefix, 0, vaddr, vport>` for a service (vport 0 for port-0
    /// services), `<0, client/prefix, 0, fwmark, 0>` for a fwmark service, the fwmark stored
    /// big-endian in the first 4 address bytes. `prefix_len` is clamped to the family's width;
    /// `None` if the virtual address's family differs from the client's.
    pub fn template(
        protocol: u8,
        client: IpAddr,
        prefix_len: u8,
        target: TemplateTarget,
    ) -> Option<ConnKey> {
        let (family, raw) = ip_to_raw(client);
        let caddr = mask_prefix(family, &raw, prefix_len);
        let (protocol, vaddr, vport) = match target {
            TemplateTarget::Virtual(v) => {
                let (vf, vaddr) = ip_to_raw(v.ip());
                if vf != family {
                    return None;
                }
                (protocol, vaddr, v.port())
            }
            TemplateTarget::Fwmark(mark) => (proto::ANY, fwmark_addr(mark), 0),
        };
        Some(ConnKey {
            caddr,
            vaddr,
            cport: 0,
            vport,
            proto: protocol,
            meta: family.tag() | META_TEMPLATE,
        })
    }

    pub fn protocol(&self) -> u8 {
        self.proto
    }

    pub fn family(&self) -> Family {
        // Constructors only produce valid tags; free slots are never handed out.
        Family::from_tag(self.meta & META_FAMILY).unwrap_or(Family::V4)
    }

    pub fn is_template(&self) -> bool {
        self.meta & META_TEMPLATE != 0
    }

    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(raw_to_ip(self.family(), &self.caddr), self.cport)
    }

    /// Virtual address:port. For fwmark templates the address holds the fwmark (as IPVS does).
    pub fn virtual_addr(&self) -> SocketAddr {
        SocketAddr::new(raw_to_ip(self.family(), &self.vaddr), self.vport)
    }

    pub fn client_raw(&self) -> (&[u8; 16], u16) {
        (&self.caddr, self.cport)
    }

    pub fn virtual_raw(&self) -> (&[u8; 16], u16) {
        (&self.vaddr, self.vport)
    }

    pub(crate) fn is_free(&self) -> bool {
        self.meta == 0
    }

    pub(crate) const FREE: ConnKey = ConnKey {
        caddr: [0; 16],
        vaddr: [0; 16],
        cport: 0,
        vport: 0,
        proto: 0,
        meta: 0,
    };
}

impl fmt::Debug for ConnKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_free() {
            return f.write_str("ConnKey(free)");
        }
        f.debug_struct("ConnKey")
            .field("proto", &self.proto)
            .field("client", &self.client())
            .field("virtual", &self.virtual_addr())
            .field("template", &self.is_template())
            .finish()
    }
}

fn fwmark_addr(mark: u32) -> [u8; 16] {
    let m = mark.to_be_bytes();
    v4_bytes(m)
}

/// How a connection is tied to its persistence template; stored in the entry (2 bytes) so the
/// table can find the template again when the connection goes away, with no pointer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistKind {
    /// `<proto, caddr/m, 0, vaddr, vport>`: a normal persistent service.
    Port = 1,
    /// `<proto, caddr/m, 0, vaddr, 0>`: port-0 ("any port") services, and FTP.
    AnyPort = 2,
    /// `<IPPROTO_IP, caddr/m, 0, fwmark, 0>`: fwmark services (fwmark taken from the entry).
    Fwmark = 3,
}

impl PersistKind {
    pub(crate) const fn from_u8(v: u8) -> Option<PersistKind> {
        match v {
            1 => Some(PersistKind::Port),
            2 => Some(PersistKind::AnyPort),
            3 => Some(PersistKind::Fwmark),
            _ => None,
        }
    }
}

/// A service's persistence: template kind plus client netmask as a prefix length
/// (`ipvsadm -M 255.255.255.0` is prefix 24; non-contiguous IPv4 masks are not supported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    pub kind: PersistKind,
    pub prefix_len: u8,
}

impl Persistence {
    pub const fn new(kind: PersistKind, prefix_len: u8) -> Self {
        Persistence { kind, prefix_len }
    }

    /// The template key for connection `conn` (and its packet's `fwmark`, for fwmark services).
    pub fn template_key(&self, conn: &ConnKey, fwmark: u32) -> ConnKey {
        let family = conn.family();
        let caddr = mask_prefix(family, &conn.caddr, self.prefix_len);
        let (protocol, vaddr, vport) = match self.kind {
            PersistKind::Port => (conn.proto, conn.vaddr, conn.vport),
            PersistKind::AnyPort => (conn.proto, conn.vaddr, 0),
            PersistKind::Fwmark => (proto::ANY, fwmark_addr(fwmark), 0),
        };
        ConnKey {
            caddr,
            vaddr,
            cport: 0,
            vport,
            proto: protocol,
            meta: family.tag() | META_TEMPLATE,
        }
    }
}

/// Key of a NAT reply as the director sees it: (protocol, real addr:port = source,
/// client addr:port = destination).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub(crate) raddr: [u8; 16],
    pub(crate) caddr: [u8; 16],
    pub(crate) rport: u16,
    pub(crate) cport: u16,
    pub(crate) proto: u8,
    pub(crate) family: u8,
}

impl ReplyKey {
    /// `real` is the reply's source, `client` its destination; `None` on mixed families.
    pub fn new(protocol: u8, real: SocketAddr, client: SocketAddr) -> Option<ReplyKey> {
        let (rf, raddr) = ip_to_raw(real.ip());
        let (cf, caddr) = ip_to_raw(client.ip());
        if rf != cf {
            return None;
        }
        Some(ReplyKey {
            raddr,
            caddr,
            rport: real.port(),
            cport: client.port(),
            proto: protocol,
            family: rf.tag(),
        })
    }

    pub const fn v4(protocol: u8, raddr: [u8; 4], rport: u16, caddr: [u8; 4], cport: u16) -> Self {
        ReplyKey {
            raddr: v4_bytes(raddr),
            caddr: v4_bytes(caddr),
            rport,
            cport,
            proto: protocol,
            family: Family::V4.tag(),
        }
    }

    pub const fn v6(
        protocol: u8,
        raddr: [u8; 16],
        rport: u16,
        caddr: [u8; 16],
        cport: u16,
    ) -> Self {
        ReplyKey {
            raddr,
            caddr,
            rport,
            cport,
            proto: protocol,
            family: Family::V6.tag(),
        }
    }

    pub fn protocol(&self) -> u8 {
        self.proto
    }

    pub fn family(&self) -> Family {
        Family::from_tag(self.family).unwrap_or(Family::V4)
    }

    pub fn real(&self) -> SocketAddr {
        SocketAddr::new(raw_to_ip(self.family(), &self.raddr), self.rport)
    }

    pub fn client(&self) -> SocketAddr {
        SocketAddr::new(raw_to_ip(self.family(), &self.caddr), self.cport)
    }
}

impl fmt::Debug for ReplyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplyKey")
            .field("proto", &self.proto)
            .field("real", &self.real())
            .field("client", &self.client())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_size_and_conversions() {
        assert_eq!(std::mem::size_of::<ConnKey>(), 38);
        let c: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let v: SocketAddr = "192.0.2.10:80".parse().unwrap();
        let k = ConnKey::new(proto::TCP, c, v).unwrap();
        assert_eq!(
            k,
            ConnKey::v4(6, [198, 51, 100, 7], 40000, [192, 0, 2, 10], 80)
        );
        assert_eq!(k.client(), c);
        assert_eq!(k.virtual_addr(), v);
        assert_eq!(k.family(), Family::V4);
        assert!(!k.is_template());
        let v6: SocketAddr = "[2001:db8::10]:80".parse().unwrap();
        assert!(ConnKey::new(proto::TCP, c, v6).is_none());
    }

    #[test]
    fn templates_match_persistence_links() {
        let c: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let v: SocketAddr = "192.0.2.10:443".parse().unwrap();
        let k = ConnKey::new(proto::TCP, c, v).unwrap();
        let p = Persistence::new(PersistKind::Port, 24);
        let t = ConnKey::template(proto::TCP, c.ip(), 24, TemplateTarget::Virtual(v)).unwrap();
        assert_eq!(p.template_key(&k, 0), t);
        assert!(t.is_template());
        assert_eq!(t.client(), "198.51.100.0:0".parse().unwrap());

        let fw = Persistence::new(PersistKind::Fwmark, 32).template_key(&k, 7);
        let t2 = ConnKey::template(proto::TCP, c.ip(), 32, TemplateTarget::Fwmark(7)).unwrap();
        assert_eq!(fw, t2);
        assert_eq!(fw.protocol(), proto::ANY);
        assert_eq!(fw.virtual_addr(), "0.0.0.7:0".parse().unwrap());

        let any = Persistence::new(PersistKind::AnyPort, 32).template_key(&k, 0);
        assert_eq!(any.virtual_addr(), "192.0.2.10:0".parse().unwrap());
        assert_eq!(any.protocol(), proto::TCP);
    }
}
