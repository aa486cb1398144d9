//! `fulcrum drill serve`: a tiny echo target for real servers. Every TCP line and every UDP
//! datagram `M` is answered with `NAME M`, so a drill can tell which real server answered and
//! check that its data came back unchanged. TCP connections stay open as long as the client
//! keeps them (keep-alive flows). UDP replies leave from the address the datagram was sent to
//! (IP_PKTINFO / IPV6_PKTINFO), so a wildcard socket answers correctly for a VIP on `lo` in DR
//! mode.

use std::io;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;
use std::net::SocketAddrV4;
use std::net::SocketAddrV6;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::ServeArgs;
use super::lo;

/// Longest line (TCP) a client may send; longer ones close the connection.
const MAX_LINE: usize = 4096;

pub async fn serve(args: ServeArgs) -> Result<()> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => hostname().context("reading the host name (or give --name)")?,
    };
    if name.is_empty() || name.contains(char::is_whitespace) {
        bail!("--name {name:?}: one word, please");
    }
    if args.vip_on_lo.iter().any(IpAddr::is_ipv4) {
        lo::check_arp(Path::new("/proc/sys/net/ipv4/conf")).map_err(anyhow::Error::msg)?;
    }
    let mut added = Vec::new();
    let mut result = Ok(());
    for ip in &args.vip_on_lo {
        match lo::add(*ip) {
            Ok(true) => added.push(*ip),
            Ok(false) => {}
            Err(e) => {
                result = Err(anyhow::anyhow!(
                    "adding {ip} to lo: {e} (needs CAP_NET_ADMIN)"
                ));
                break;
            }
        }
    }
    if result.is_ok() {
        result = run(&args, &name).await;
    }
    // The addresses this process added go with it; ones that were there stay.
    for ip in added {
        if let Err(e) = lo::remove(ip) {
            eprintln!("warning: removing {ip} from lo: {e}");
        }
    }
    result
}

async fn run(args: &ServeArgs, name: &str) -> Result<()> {
    let name: Arc<str> = name.into();
    let conns = Arc::new(Semaphore::new(args.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    for addr in &args.listen {
        let tcp = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding tcp {addr}"))?;
        let udp = UdpSocket::bind(addr)
            .await
            .with_context(|| format!("binding udp {addr}"))?;
        want_pktinfo(&udp).with_context(|| format!("udp {addr}: IP_PKTINFO"))?;
        tasks.spawn(accept(tcp, name.clone(), conns.clone()));
        tasks.spawn(echo_udp(udp, name.clone()));
    }
    let listen: Vec<String> = args.listen.iter().map(|a| a.to_string()).collect();
    let vips: Vec<String> = args.vip_on_lo.iter().map(|a| a.to_string()).collect();
    println!(
        "fulcrum drill serve: answering as {name:?} on tcp+udp {}{}",
        listen.join(", "),
        if vips.is_empty() {
            String::new()
        } else {
            format!("; VIPs on lo: {}", vips.join(", "))
        }
    );
    use tokio::signal::unix::SignalKind;
    let mut term = tokio::signal::unix::signal(SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => Ok(()),
        _ = int.recv() => Ok(()),
        Some(r) = tasks.join_next() => match r {
            Ok(Err(e)) => Err(e),
            _ => bail!("a listener stopped"),
        },
    }
}

async fn accept(l: TcpListener, name: Arc<str>, conns: Arc<Semaphore>) -> Result<()> {
    loop {
        let (s, _) = l.accept().await.context("accept")?;
        // Over the limit: the connection is closed at once.
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let name = name.clone();
        tokio::spawn(async move {
            let _ = echo_tcp(s, &name).await;
            drop(permit);
        });
    }
}

async fn echo_tcp(mut s: TcpStream, name: &str) -> io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut out: Vec<u8> = Vec::new();
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&chunk[..n]);
        out.clear();
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            out.extend_from_slice(name.as_bytes());
            out.push(b' ');
            out.extend(pending.drain(..=pos));
        }
        if pending.len() > MAX_LINE {
            return Ok(());
        }
        // All complete lines of a read answered in one write.
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
    }
}

async fn echo_udp(s: UdpSocket, name: Arc<str>) -> Result<()> {
    let fd = s.as_raw_fd();
    let v6 = s.local_addr()?.is_ipv6();
    let mut buf = [0u8; 2048];
    let mut reply: Vec<u8> = Vec::with_capacity(buf.len() + 64);
    loop {
        let (n, peer, dst) = s
            .async_io(Interest::READABLE, || recv_with_dst(fd, &mut buf))
            .await
            .context("udp receive")?;
        reply.clear();
        reply.extend_from_slice(name.as_bytes());
        reply.push(b' ');
        reply.extend_from_slice(&buf[..n]);
        // A failed reply (the client went away) is the client's loss, not the server's end.
        let _ = s
            .async_io(Interest::WRITABLE, || send_from(fd, &reply, peer, dst, v6))
            .await;
    }
}

fn hostname() -> io::Result<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its length; gethostname NUL-terminates within it.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

fn setsockopt_int(fd: RawFd, level: i32, opt: i32, value: i32) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length is its size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&value as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Ask for each datagram's destination address. On a dual-stack IPv6 socket IPv4 datagrams
/// report it as an IPv4-mapped IPv6 address.
fn want_pktinfo(s: &UdpSocket) -> io::Result<()> {
    let fd = s.as_raw_fd();
    if s.local_addr()?.is_ipv6() {
        setsockopt_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
    } else {
        setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)
    }
}

/// Room for one IPv6 (or IPv4) packet-info control message, 8-byte aligned.
type ControlBuf = [u64; 8];

fn recv_with_dst(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    // SAFETY: all-zero sockaddr_storage and msghdr are valid values.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control: ControlBuf = [0; 8];
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut peer as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of::<ControlBuf>();
    // SAFETY: every pointer in `msg` points at live buffers of the lengths given.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let peer = from_sockaddr(&peer)?;
    let mut dst = None;
    // SAFETY: the kernel filled `msg_control` with well-formed control messages up to
    // `msg_controllen`; CMSG_* walk them within that length and read them unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = std::ptr::read_unaligned(c);
            if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let info: libc::in6_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>());
                dst = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            } else if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let info: libc::in_pktinfo =
                    std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>());
                dst = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    info.ipi_addr.s_addr,
                ))));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, peer, dst))
}

fn send_from(
    fd: RawFd,
    data: &[u8],
    peer: SocketAddr,
    src: Option<IpAddr>,
    v6_socket: bool,
) -> io::Result<usize> {
    let (mut name, name_len) = to_sockaddr(peer);
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control: ControlBuf = [0; 8];
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = name_len;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(src) = src {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: the control buffer has room for one pktinfo message (checked by the sizes
        // below: CMSG_SPACE of either struct is at most 40 bytes, the buffer 64); the data is
        // written unaligned.
        unsafe {
            if v6_socket {
                let ip = match src {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                };
                let len = std::mem::size_of::<libc::in6_pktinfo>() as u32;
                msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: ip.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in6_pktinfo>(), info);
            } else if let IpAddr::V4(a) = src {
                let len = std::mem::size_of::<libc::in_pktinfo>() as u32;
                msg.msg_controllen = libc::CMSG_SPACE(len) as usize;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as usize;
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(a).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::in_pktinfo>(), info);
            }
        }
    }
    // SAFETY: every pointer in `msg` points at live buffers of the lengths given.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, u32) {
    // SAFETY: an all-zero sockaddr_storage is valid; the writes below stay within it
    // (sockaddr_in and sockaddr_in6 are smaller than sockaddr_storage).
    unsafe {
        let mut s: libc::sockaddr_storage = std::mem::zeroed();
        match a {
            SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                std::ptr::write_unaligned((&mut s as *mut libc::sockaddr_storage).cast(), sin);
                (s, std::mem::size_of::<libc::sockaddr_in>() as u32)
            }
            SocketAddr::V6(a) => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as u16,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                std::ptr::write_unaligned((&mut s as *mut libc::sockaddr_storage).cast(), sin6);
                (s, std::mem::size_of::<libc::sockaddr_in6>() as u32)
            }
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    // SAFETY: the family says which struct the kernel wrote; both fit in sockaddr_storage.
    unsafe {
        match i32::from(s.ss_family) {
            libc::AF_INET => {
                let sin: libc::sockaddr_in =
                    std::ptr::read_unaligned((s as *const libc::sockaddr_storage).cast());
                Ok(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6: libc::sockaddr_in6 =
                    std::ptr::read_unaligned((s as *const libc::sockaddr_storage).cast());
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            f => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("datagram from address family {f}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wildcard dual-stack socket answers from the address asked: here a second loopback
    /// address, which a plain `send_to` would not use as the source.
    #[tokio::test(flavor = "current_thread")]
    async fn udp_replies_leave_from_the_address_asked() {
        let server = UdpSocket::bind("[::]:0").await.unwrap();
        want_pktinfo(&server).unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(echo_udp(server, "t".into()));
        for target in [
            format!("127.0.0.2:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ] {
            let target: SocketAddr = target.parse().unwrap();
            let bind = if target.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            };
            let c = UdpSocket::bind(bind).await.unwrap();
            // Connected: a reply from any other source address is dropped by the kernel.
            c.connect(target).await.unwrap();
            c.send(b"hello").await.unwrap();
            let mut buf = [0u8; 64];
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), c.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no reply from {target}"))
                .unwrap();
            assert_eq!(&buf[..n], b"t hello");
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tcp_lines_are_echoed_with_the_name() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(accept(l, "rs9".into(), Arc::new(Semaphore::new(4))));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"a 1\nb 2\n").await.unwrap();
        let mut got = Vec::new();
        while got.iter().filter(|&&b| b == b'\n').count() < 2 {
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, b"rs9 a 1\nrs9 b 2\n");
    }
}
