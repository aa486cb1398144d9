//! VIPs on the loopback interface of a DR real server (`drill serve --vip-on-lo`): added and
//! removed with rtnetlink, like `ip addr add VIP/32 dev lo`, after checking that the server
//! will not answer ARP for them.

use std::io;
use std::net::IpAddr;
use std::path::Path;

const NLMSG_HDR: usize = 16;
const IFADDRMSG: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;

/// Adds `ip` (/32 or /128) to `lo`. Gives false when it was there already.
pub fn add(ip: IpAddr) -> io::Result<bool> {
    match request(libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL, ip) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `ip` from `lo`.
pub fn remove(ip: IpAddr) -> io::Result<()> {
    request(libc::RTM_DELADDR, 0, ip)
}

/// The netlink message for one address on `lo`.
fn message(kind: u16, flags: i32, ip: IpAddr, ifindex: u32) -> Vec<u8> {
    let (family, prefix, bytes, ifa_flags): (u8, u8, Vec<u8>, u8) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec(), 0),
        // No duplicate address detection: the address is ours on purpose, on every real server.
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec(), IFA_F_NODAD),
    };
    let attr = |kind: u16, data: &[u8]| {
        let mut a = Vec::with_capacity(4 + data.len());
        a.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(data);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    };
    let mut attrs = attr(IFA_ADDRESS, &bytes);
    if ip.is_ipv4() {
        attrs.extend(attr(IFA_LOCAL, &bytes));
    }
    let len = NLMSG_HDR + IFADDRMSG + attrs.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // sequence number
    m.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    // struct ifaddrmsg: family, prefix length, flags, scope (global), interface index.
    m.extend_from_slice(&[family, prefix, ifa_flags, 0]);
    m.extend_from_slice(&ifindex.to_ne_bytes());
    m.extend_from_slice(&attrs);
    m
}

fn request(kind: u16, flags: i32, ip: IpAddr) -> io::Result<()> {
    let ifindex = loopback_index()?;
    let msg = message(kind, flags, ip, ifindex);
    // SAFETY: plain socket(2); the descriptor is owned (and closed) by `fd` below.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns; `owned` closes it on return.
    let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&owned);
    // SAFETY: an all-zero sockaddr_nl is valid (pid 0 = the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: `msg` and `kernel` outlive the call; the lengths are theirs.
    let sent = unsafe {
        libc::sendto(
            fd,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        return ack(&buf[..n as usize]);
    }
}

/// Reads the kernel's NLMSG_ERROR answer: error 0 is the acknowledgement.
fn ack(reply: &[u8]) -> io::Result<()> {
    let short = || io::Error::new(io::ErrorKind::InvalidData, "short netlink reply");
    let kind = u16::from_ne_bytes(
        reply
            .get(4..6)
            .ok_or_else(short)?
            .try_into()
            .unwrap_or([0; 2]),
    );
    if kind != libc::NLMSG_ERROR as u16 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected netlink reply type {kind}"),
        ));
    }
    let err = i32::from_ne_bytes(
        reply
            .get(NLMSG_HDR..NLMSG_HDR + 4)
            .ok_or_else(short)?
            .try_into()
            .unwrap_or([0; 4]),
    );
    match err {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(-e)),
    }
}

fn loopback_index() -> io::Result<u32> {
    let name = c"lo";
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

fn sysctl(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A DR real server with an IPv4 VIP on `lo` must not answer ARP for it (or it steals the VIP
/// from the director) nor use it as the source of its own ARP requests: the kernel applies the
/// larger of `all` and the interface's `arp_ignore` (≥ 1 needed) and `arp_announce` (2
/// needed). IPv6 needs nothing: neighbour solicitations are answered only for addresses on the
/// interface they arrive on.
pub fn check_arp(conf: &Path) -> Result<(), String> {
    let all_ignore = sysctl(&conf.join("all/arp_ignore")).unwrap_or(0);
    let all_announce = sysctl(&conf.join("all/arp_announce")).unwrap_or(0);
    let entries = std::fs::read_dir(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let mut bad = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["all", "default", "lo"].contains(&name.as_str()) {
            continue;
        }
        let ignore = all_ignore.max(sysctl(&e.path().join("arp_ignore")).unwrap_or(0));
        let announce = all_announce.max(sysctl(&e.path().join("arp_announce")).unwrap_or(0));
        if ignore < 1 || announce < 2 {
            bad.push(format!(
                "{name} (arp_ignore {ignore}, arp_announce {announce})"
            ));
        }
    }
    if bad.is_empty() {
        return Ok(());
    }
    bad.sort();
    Err(format!(
        "with an IPv4 VIP on lo, {} would answer ARP for it and take it from the director: \
         set net.ipv4.conf.all.arp_ignore=1 and net.ipv4.conf.all.arp_announce=2 first",
        bad.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_message_has_the_kernel_layout() {
        let m = message(
            libc::RTM_NEWADDR,
            libc::NLM_F_CREATE,
            "192.0.2.100".parse().unwrap(),
            1,
        );
        // header 16 + ifaddrmsg 8 + two 8-byte attributes.
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(m[16..20], [libc::AF_INET as u8, 32, 0, 0]);
        assert_eq!(m[28..32], [192, 0, 2, 100]);
        let m = message(libc::RTM_DELADDR, 0, "2001:db8::100".parse().unwrap(), 1);
        assert_eq!(m.len(), 16 + 8 + 20);
        assert_eq!(m[16..20], [libc::AF_INET6 as u8, 128, IFA_F_NODAD, 0]);
    }

    #[test]
    fn arp_settings_are_checked_per_interface() {
        let dir = std::env::temp_dir().join(format!("fulcrum-arp-{}", std::process::id()));
        let set = |iface: &str, ignore: u32, announce: u32| {
            std::fs::create_dir_all(dir.join(iface)).unwrap();
            std::fs::write(dir.join(iface).join("arp_ignore"), format!("{ignore}\n")).unwrap();
            std::fs::write(
                dir.join(iface).join("arp_announce"),
                format!("{announce}\n"),
            )
            .unwrap();
        };
        set("all", 0, 0);
        set("default", 0, 0);
        set("lo", 0, 0);
        set("eth0", 0, 0);
        let e = check_arp(&dir).unwrap_err();
        assert!(e.contains("eth0 (arp_ignore 0, arp_announce 0)"), "{e}");
        set("all", 1, 2);
        assert_eq!(check_arp(&dir), Ok(()));
        set("all", 0, 0);
        set("eth0", 1, 2);
        assert_eq!(check_arp(&dir), Ok(()));
        set("eth1", 1, 1);
        assert!(check_arp(&dir).unwrap_err().contains("eth1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
