//! The classic BPF socket filter that keeps the kernel from copying us anything but VIP
//! traffic, NAT replies and the ARP/NDP we answer or learn from.
//!
//! Built from the current VIPs and NAT real servers and re-attached on every config change
//! (`SO_ATTACH_FILTER` swaps atomically). Comparisons are `jeq k, 0, 1; ja target` pairs so
//! no jump offset limit (8 bits for conditional jumps) caps the number of addresses.

use std::net::Ipv4Addr;
use std::net::Ipv6Addr;

/// One classic BPF instruction, as `struct sock_filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const JA: u16 = 0x05;
const RET_K: u16 = 0x06;
/// SKF_AD_OFF + SKF_AD_PKTTYPE: the packet type (host, broadcast, outgoing, ...).
const AD_PKTTYPE: u32 = 0xffff_f000 + 4;
const PACKET_OUTGOING: u32 = 4;
const SNAP_ALL: u32 = 0x0004_0000;

/// What the filter lets through.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub vips4: Vec<Ipv4Addr>,
    pub vips6: Vec<Ipv6Addr>,
    /// Real servers in NAT mode: their replies come back through us.
    pub nat_reals4: Vec<Ipv4Addr>,
    pub nat_reals6: Vec<Ipv6Addr>,
}

/// Builder that resolves symbolic jump targets once the program is laid out.
struct Prog {
    insns: Vec<Insn>,
    /// (instruction index, label) of `ja` instructions to patch.
    fixups: Vec<(usize, Label)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    Accept,
    Reject,
    Arp,
    V4,
    V6,
}

impl Prog {
    fn op(&mut self, code: u16, k: u32) {
        self.insns.push(Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        });
    }
    fn ja(&mut self, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(JA, 0);
    }
    /// If A == k, go to `to`; else fall through.
    fn if_eq(&mut self, k: u32, to: Label) {
        self.insns.push(Insn {
            code: JEQ_K,
            jt: 0,
            jf: 1,
            k,
        });
        self.ja(to);
    }
    /// If the 16 bytes at `off` equal `addr`, go to `to`; else fall through.
    fn if_v6_eq(&mut self, off: u32, addr: &Ipv6Addr, to: Label) {
        let o = addr.octets();
        let words: Vec<u32> = o
            .chunks(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // ld w0; jeq w0 ? next : skip; ... each failing compare jumps past the final `ja`.
        for (i, w) in words.iter().enumerate() {
            self.op(LD_W_ABS, off + 4 * i as u32);
            let remaining = (words.len() - i - 1) as u8;
            // Past: the rest of this group (2 insns per remaining word) and the `ja`.
            self.insns.push(Insn {
                code: JEQ_K,
                jt: 0,
                jf: remaining * 2 + 1,
                k: *w,
            });
        }
        self.ja(to);
    }
}

/// The kernel's limit on a classic BPF program (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

/// The filter program for `spec`. Too many addresses for one program: a coarser filter that
/// passes all ARP and IP (the engine then sorts in userspace; correctness is unchanged).
pub fn build(spec: &FilterSpec) -> Vec<Insn> {
    let exact = build_exact(spec);
    if exact.len() <= MAX_INSNS {
        return exact;
    }
    tracing::warn!(
        insns = exact.len(),
        "too many VIPs/NAT real servers for an exact socket filter; passing all IP traffic"
    );
    build_permissive()
}

/// Everything ARP, IPv4 and IPv6 that the host did not send itself.
fn build_permissive() -> Vec<Insn> {
    let i = |code, jt, jf, k| Insn { code, jt, jf, k };
    vec![
        i(LD_W_ABS, 0, 0, AD_PKTTYPE),
        i(JEQ_K, 5, 0, PACKET_OUTGOING),
        i(LD_H_ABS, 0, 0, 12),
        i(JEQ_K, 2, 0, 0x0806),
        i(JEQ_K, 1, 0, 0x0800),
        i(JEQ_K, 0, 1, 0x86dd),
        i(RET_K, 0, 0, SNAP_ALL),
        i(RET_K, 0, 0, 0),
    ]
}

fn build_exact(spec: &FilterSpec) -> Vec<Insn> {
    let mut p = Prog {
        insns: Vec::new(),
        fixups: Vec::new(),
    };
    let mut labels: Vec<(Label, usize)> = Vec::new();
    // Never our own (or the host's) transmitted frames.
    p.op(LD_W_ABS, AD_PKTTYPE);
    p.if_eq(PACKET_OUTGOING, Label::Reject);
    p.op(LD_H_ABS, 12);
    p.if_eq(0x0806, Label::Arp);
    p.if_eq(0x0800, Label::V4);
    p.if_eq(0x86dd, Label::V6);
    p.ja(Label::Reject);

    // ARP: requests for a VIP (we answer them) and every reply (we learn real servers' MACs).
    labels.push((Label::Arp, p.insns.len()));
    p.op(LD_H_ABS, 20);
    p.if_eq(2, Label::Accept);
    p.op(LD_W_ABS, 38);
    for v in &spec.vips4 {
        p.if_eq(u32::from(*v), Label::Accept);
    }
    p.ja(Label::Reject);

    // IPv4: to a VIP, or from a NAT real server.
    labels.push((Label::V4, p.insns.len()));
    p.op(LD_W_ABS, 30);
    for v in &spec.vips4 {
        p.if_eq(u32::from(*v), Label::Accept);
    }
    p.op(LD_W_ABS, 26);
    for r in &spec.nat_reals4 {
        p.if_eq(u32::from(*r), Label::Accept);
    }
    p.ja(Label::Reject);

    // IPv6: neighbour solicitations/advertisements, then to a VIP or from a NAT real server.
    labels.push((Label::V6, p.insns.len()));
    p.op(LD_B_ABS, 20);
    p.insns.push(Insn {
        code: JEQ_K,
        jt: 0,
        // Past the NS/NA checks below (one load, two compare-and-jump pairs).
        jf: 5,
        k: 58,
    });
    p.op(LD_B_ABS, 54);
    p.if_eq(135, Label::Accept);
    p.if_eq(136, Label::Accept);
    for v in &spec.vips6 {
        p.if_v6_eq(38, v, Label::Accept);
    }
    for r in &spec.nat_reals6 {
        p.if_v6_eq(22, r, Label::Accept);
    }
    p.ja(Label::Reject);

    labels.push((Label::Accept, p.insns.len()));
    p.op(RET_K, SNAP_ALL);
    labels.push((Label::Reject, p.insns.len()));
    p.op(RET_K, 0);

    for (at, label) in std::mem::take(&mut p.fixups) {
        let target = labels
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, i)| *i)
            .unwrap_or(at + 1);
        // `ja` jumps relative to the next instruction.
        p.insns[at].k = (target - at - 1) as u32;
    }
    p.insns
}

/// A minimal classic-BPF interpreter for the instructions [`build`] emits, so tests can run
/// the program over real frames without a socket.
#[cfg(test)]
pub fn run(prog: &[Insn], frame: &[u8], pkttype: u32) -> u32 {
    let mut a: u32 = 0;
    let mut pc = 0usize;
    let load = |off: u32, n: usize| -> Option<u32> {
        let o = off as usize;
        let b = frame.get(o..o + n)?;
        Some(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)))
    };
    while let Some(i) = prog.get(pc) {
        pc += 1;
        match i.code {
            LD_W_ABS if i.k == AD_PKTTYPE => a = pkttype,
            LD_W_ABS => match load(i.k, 4) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_ABS => match load(i.k, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_ABS => match load(i.k, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            JEQ_K => pc += usize::from(if a == i.k { i.jt } else { i.jf }),
            JA => pc += i.k as usize,
            RET_K => return i.k,
            _ => return 0,
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(&[0; 20]);
        eth(0x0800, &h)
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, icmp_type: u8) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 32, next, 64];
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.push(icmp_type);
        h.extend_from_slice(&[0; 31]);
        eth(0x86dd, &h)
    }

    fn arp(op: u16, target: Ipv4Addr) -> Vec<u8> {
        let mut a = vec![0, 1, 8, 0, 6, 4];
        a.extend_from_slice(&op.to_be_bytes());
        a.extend_from_slice(&[2, 0, 0, 0, 0, 9, 192, 0, 2, 9]);
        a.extend_from_slice(&[0; 6]);
        a.extend_from_slice(&target.octets());
        eth(0x0806, &a)
    }

    fn spec() -> FilterSpec {
        FilterSpec {
            vips4: vec![
                "192.0.2.100".parse().unwrap(),
                "192.0.2.101".parse().unwrap(),
            ],
            vips6: vec!["2001:db8::100".parse().unwrap()],
            nat_reals4: vec!["198.51.100.10".parse().unwrap()],
            nat_reals6: vec!["2001:db8:1::10".parse().unwrap()],
        }
    }

    #[test]
    fn accepts_exactly_vip_traffic_nat_replies_and_arp_ndp() {
        let p = build(&spec());
        let ip = |s: &str| -> Ipv4Addr { s.parse().unwrap() };
        let ip6 = |s: &str| -> Ipv6Addr { s.parse().unwrap() };
        let host = 0;
        assert_eq!(
            run(&p, &v4(ip("192.0.2.9"), ip("192.0.2.100")), host),
            SNAP_ALL
        );
        assert_eq!(
            run(&p, &v4(ip("192.0.2.9"), ip("192.0.2.101")), host),
            SNAP_ALL
        );
        assert_eq!(run(&p, &v4(ip("192.0.2.9"), ip("192.0.2.102")), host), 0);
        assert_eq!(
            run(&p, &v4(ip("198.51.100.10"), ip("192.0.2.9")), host),
            SNAP_ALL
        );
        assert_eq!(run(&p, &v4(ip("198.51.100.11"), ip("192.0.2.9")), host), 0);
        // Our own transmissions never come back.
        assert_eq!(
            run(&p, &v4(ip("192.0.2.9"), ip("192.0.2.100")), PACKET_OUTGOING),
            0
        );
        assert_eq!(run(&p, &arp(1, ip("192.0.2.100")), host), SNAP_ALL);
        assert_eq!(run(&p, &arp(1, ip("192.0.2.50")), host), 0);
        assert_eq!(run(&p, &arp(2, ip("192.0.2.50")), host), SNAP_ALL);
        let c = ip6("2001:db8::9");
        assert_eq!(run(&p, &v6(c, ip6("2001:db8::100"), 6, 0), host), SNAP_ALL);
        assert_eq!(run(&p, &v6(c, ip6("2001:db8::101"), 6, 0), host), 0);
        assert_eq!(
            run(&p, &v6(ip6("2001:db8:1::10"), c, 17, 0), host),
            SNAP_ALL
        );
        assert_eq!(
            run(&p, &v6(c, ip6("ff02::1:ff00:100"), 58, 135), host),
            SNAP_ALL
        );
        assert_eq!(run(&p, &v6(c, ip6("2001:db8::9"), 58, 136), host), SNAP_ALL);
        assert_eq!(run(&p, &v6(c, ip6("2001:db8::9"), 58, 128), host), 0);
        // Other ethertypes and runts.
        assert_eq!(run(&p, &eth(0x88cc, &[0; 40]), host), 0);
        assert_eq!(run(&p, &[0u8; 10], host), 0);
    }

    #[test]
    fn too_many_addresses_fall_back_to_passing_all_ip() {
        let mut s = spec();
        for i in 0..3000u32 {
            s.nat_reals4.push(Ipv4Addr::from(0xc633_6400 + i));
        }
        let p = build(&s);
        assert_eq!(p, build_permissive());
        let any: Ipv4Addr = "203.0.113.7".parse().unwrap();
        assert_eq!(run(&p, &v4(any, any), 0), SNAP_ALL);
        assert_eq!(run(&p, &v4(any, any), PACKET_OUTGOING), 0);
        assert_eq!(run(&p, &eth(0x88cc, &[0; 40]), 0), 0);
    }

    #[test]
    fn long_address_lists_need_no_long_conditional_jumps() {
        let mut s = FilterSpec::default();
        for i in 0..300u32 {
            s.nat_reals4.push(Ipv4Addr::from(0xc633_6400 + i));
            s.vips6.push(Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0000_1000u128 + u128::from(i),
            ));
        }
        let p = build(&s);
        assert!(p.len() <= MAX_INSNS, "{}", p.len());
        let last4 = Ipv4Addr::from(0xc633_6400 + 299);
        let dst: Ipv4Addr = "192.0.2.9".parse().unwrap();
        assert_eq!(run(&p, &v4(last4, dst), 0), SNAP_ALL);
        let last6 = Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0000_1000u128 + 299);
        assert_eq!(
            run(&p, &v6("2001:db8::9".parse().unwrap(), last6, 6, 0), 0),
            SNAP_ALL
        );
    }
}
