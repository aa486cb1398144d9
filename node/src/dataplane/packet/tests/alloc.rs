//! Proof that the packet layer does not allocate: a counting global allocator (test builds of
//! this crate only) counts heap allocations per thread while the hot-path functions run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::classify::{frag_needed_about_reply, ns_frame, packet_too_big_about_reply};
use super::*;
use crate::dataplane::packet::{
    IcmpNat, Tunnel, build_arp_reply, build_frag_needed, build_gratuitous_arp,
    build_neighbor_advertisement, build_packet_too_big, build_unsolicited_na, classify,
    decrement_ttl, encap, rewrite_dr, rewrite_icmp_error_inner, rewrite_nat_in, rewrite_nat_out,
};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// thread-local `Cell` with a const initialiser and no destructor, so touching it never
// allocates or re-enters the allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn hot_path_does_not_allocate() {
    // Inputs are prepared (and may allocate) before counting starts.
    let tcp4 = Spec::tcp4(40000, 80).frame();
    let udp6 = Spec::udp6(40000, 53).vlan(3).frame();
    let err4 = frag_needed_about_reply(60);
    let err6 = packet_too_big_about_reply();
    let ns = ns_frame(CLIENT6, VIP6, true);
    let arp = {
        let mut v = vec![0u8; 60];
        build_gratuitous_arp(&mut v, MAC_CLIENT, VIP4, None).unwrap();
        v
    };
    let mut frames = [
        tcp4.clone(),
        udp6.clone(),
        err4.clone(),
        err6.clone(),
        ns.clone(),
        arp.clone(),
    ];
    let mut out = [0u8; 2048];
    let tunnel = Tunnel {
        src: Ipv4Addr::new(192, 0, 2, 2).into(),
        dst: REAL4.into(),
        src_mac: MAC_DIRECTOR,
        dst_mac: MAC_REAL,
        vlan_tci: None,
        mtu: 1500,
    };

    let before = allocations();
    let mut work = 0usize;
    for frame in frames.iter_mut() {
        let pkt = classify(frame).unwrap();
        let ip = pkt.ip().copied();
        work += encap(frame, &pkt, &mut out, &tunnel).unwrap_or(0);
        if let Some(ip) = ip {
            let (new_ip, vip): (IpAddr, IpAddr) = if ip.is_v4() {
                (REAL4.into(), VIP4.into())
            } else {
                (REAL6.into(), VIP6.into())
            };
            let _ = decrement_ttl(frame, &pkt);
            let _ = rewrite_nat_in(frame, &pkt, new_ip, 8080);
            let _ = rewrite_nat_out(frame, &pkt, vip, 80);
            let _ = rewrite_icmp_error_inner(frame, &pkt, IcmpNat::In, new_ip, 8080);
            if let IpAddr::V4(v) = vip {
                work += build_frag_needed(frame, &pkt, &mut out, v, 1400).unwrap_or(0);
            }
            if let IpAddr::V6(v) = vip {
                work += build_packet_too_big(frame, &pkt, &mut out, v, 1280).unwrap_or(0);
            }
        }
        let _ = rewrite_dr(frame, MAC_REAL, MAC_DIRECTOR);
        work += build_arp_reply(&pkt, &mut out, MAC_DIRECTOR).unwrap_or(0);
        work += build_neighbor_advertisement(&pkt, &mut out, MAC_DIRECTOR).unwrap_or(0);
    }
    work += build_gratuitous_arp(&mut out, MAC_DIRECTOR, VIP4, None).unwrap_or(0);
    work += build_unsolicited_na(&mut out, MAC_DIRECTOR, VIP6, None).unwrap_or(0);
    let after = allocations();

    assert!(work > 0);
    assert_eq!(after - before, 0, "the packet layer allocated");
}
