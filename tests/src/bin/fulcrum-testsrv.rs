//! A small real server and client for end-to-end tests, run inside network namespaces.
//!
//! - `serve --name rs1 --tcp 0.0.0.0:80 --udp [::]:53`: echo servers that answer every
//!   message with "NAME <message>", so a client can tell which real server served it.
//! - `probe --tcp VIP:PORT --count N`: N new flows (fresh source ports), one message each;
//!   prints JSON `{"replies": {"rs1": n, ...}, "failed": f}`.
//! - `hold --tcp VIP:PORT --count N --seconds S`: N long-lived connections that keep
//!   exchanging messages for S seconds; prints per-connection server, messages and errors.
//!
//! - `capture --iface eth0 --count N --ms T [--ip-proto P]`: raw frames received on the
//!   interface (AF_PACKET), printed as one JSON list of hex strings; for checking frames no
//!   local stack can decode (IP-in-IP when the kernel has no ipip module).
//!
//! - `observe --iface br0 --vip IP [--vip IP…] [--director-mac MAC…] [--ms T]
//!   [--max-events N]`: the failover-drill observer. On a bridge it reads every frame entering
//!   through a port (one unbound AF_PACKET socket, ingress copies only, so each frame once) and
//!   matches the egress copies to record which ports a claim was delivered to; on any other
//!   interface it reads that interface, both directions. Records each frame that claims a VIP
//!   (see `fulcrum_tests::drill`), until T ms (≤ 600 s), SIGTERM/SIGINT, or EOF on stdin when
//!   stdin is a pipe. Prints "ready", then one JSON line
//!   `{"t0_mono_us", "duration_us", "frames", "kernel_drops", "truncated", "from_vip_ignored":
//!   {mac: n}, "events": [{"t_us", "kind", "vip", "mac", "lladdr"?, "port"?, "delivered_to"?}]}`.
//! - `ping --udp|--tcp ADDR:PORT [--interval-ms 5] [--ms T] [--timeout-ms 1000] [--gap-ms G]`:
//!   a continuous prober against `serve`: UDP sends a numbered datagram every interval from one
//!   socket; TCP keeps one connection exchanging a line every interval and reconnects after an
//!   error or a reply timeout. Stops like `observe`. Prints "ready", then
//!   `{"sent", "received", "max_gap_ms", "gaps": [{"from_ms", "to_ms"}], "first_reply_after_ms",
//!   "tail_gap_ms", "servers": {name: n}, "server_changes", "reconnects", …}`; `max_gap_ms` is
//!   the longest time between two consecutive replies, gaps listed are those over G ms
//!   (default 10 × interval, at least 20).
//! - `announce --iface eth0 --vip IP [--vip IP…] [--mac MAC] [--count N] [--interval-ms I]
//!   [--reply] [--from-vip-to IP] [--dst-mac MAC] [--no-announce]`: sends, per round, a gratuitous ARP
//!   (request form; `--reply`: reply form) for each IPv4 VIP and an unsolicited neighbour
//!   advertisement (override set, to ff02::1, with TLLA) for each IPv6 VIP, from the
//!   interface's MAC or `--mac`; with `--from-vip-to`, also a UDP datagram from each VIP of
//!   that family (to `--dst-mac`, default broadcast); `--no-announce` sends only those.
//!
//! Every loop is bounded by a count and a deadline.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::io::BufReader;
use std::io::Write;
use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::TcpStream;
use std::net::UdpSocket;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;

fn arg_values(args: &[String], flag: &str) -> Vec<String> {
    args.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].clone())
        .collect()
}

fn arg(args: &[String], flag: &str) -> Option<String> {
    arg_values(args, flag).into_iter().next()
}

fn num(args: &[String], flag: &str, default: u64) -> Result<u64> {
    match arg(args, flag) {
        Some(v) => v.parse().with_context(|| format!("{flag} {v:?}")),
        None => Ok(default),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => serve(&args),
        Some("probe") => probe(&args),
        Some("hold") => hold(&args),
        Some("capture") => capture(&args),
        Some("observe") => observe(&args),
        Some("ping") => ping(&args),
        Some("announce") => announce(&args),
        _ => bail!("usage: fulcrum-testsrv serve|probe|hold|capture|observe|ping|announce ..."),
    }
}

fn serve(args: &[String]) -> Result<()> {
    let name = arg(args, "--name").unwrap_or_else(|| "srv".into());
    let mut threads = Vec::new();
    for a in arg_values(args, "--tcp") {
        let l = TcpListener::bind(&a).with_context(|| format!("bind tcp {a}"))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                let name = name.clone();
                std::thread::spawn(move || tcp_echo(conn, &name));
            }
        }));
    }
    for a in arg_values(args, "--udp") {
        let s = UdpSocket::bind(&a).with_context(|| format!("bind udp {a}"))?;
        let name = name.clone();
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut reply = format!("{name} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&reply, from);
            }
        }));
    }
    println!("ready");
    std::io::stdout().flush()?;
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Line-oriented echo: each line "x" is answered with "NAME x".
fn tcp_echo(conn: TcpStream, name: &str) {
    let Ok(mut w) = conn.try_clone() else { return };
    let r = BufReader::new(conn);
    for line in r.lines() {
        let Ok(line) = line else { return };
        // One write per reply: several small writes would wait on Nagle + delayed ACK (40 ms).
        if w.write_all(format!("{name} {line}\n").as_bytes()).is_err() {
            return;
        }
    }
}

fn probe(args: &[String]) -> Result<()> {
    let count = num(args, "--count", 10)?;
    let timeout = Duration::from_millis(num(args, "--timeout-ms", 2000)?);
    // Pad each message to this many bytes (for path-MTU checks).
    let size = num(args, "--size", 0)?.min(65_000) as usize;
    let mut replies: BTreeMap<String, u64> = BTreeMap::new();
    let mut failed = 0u64;
    let mut errors: Vec<String> = Vec::new();
    for i in 0..count {
        let r = if let Some(t) = arg(args, "--tcp") {
            probe_tcp(&t, &message(i, size), timeout)
        } else if let Some(u) = arg(args, "--udp") {
            probe_udp(&u, &message(i, size), timeout)
        } else {
            bail!("probe needs --tcp or --udp");
        };
        match r {
            Ok(name) => *replies.entry(name).or_default() += 1,
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(format!("{e:#}"));
                }
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "replies": replies, "failed": failed, "errors": errors })
    );
    Ok(())
}

fn message(i: u64, size: usize) -> String {
    let mut m = format!("probe-{i}");
    while m.len() < size {
        m.push('x');
    }
    m
}

fn probe_tcp(target: &str, msg: &str, timeout: Duration) -> Result<String> {
    let addr: SocketAddr = target.parse().context("target")?;
    let s = TcpStream::connect_timeout(&addr, timeout).context("connect")?;
    s.set_read_timeout(Some(timeout))?;
    let mut w = s.try_clone()?;
    writeln!(w, "{msg}")?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).context("read")?;
    parse_reply(&line, msg)
}

fn probe_udp(target: &str, msg: &str, timeout: Duration) -> Result<String> {
    let addr: SocketAddr = target.parse().context("target")?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind)?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(msg.as_bytes(), addr)?;
    let mut buf = vec![0u8; 66_000];
    let (n, from) = s.recv_from(&mut buf).context("recv")?;
    if from != addr {
        bail!("reply from {from}, not {addr}");
    }
    parse_reply(&String::from_utf8_lossy(&buf[..n]), msg)
}

fn parse_reply(reply: &str, sent: &str) -> Result<String> {
    let reply = reply.trim_end();
    match reply.split_once(' ') {
        Some((name, echoed)) if echoed == sent => Ok(name.to_string()),
        _ => bail!("unexpected reply {reply:?} to {sent:?}"),
    }
}

fn hold(args: &[String]) -> Result<()> {
    let target: SocketAddr = arg(args, "--tcp").context("hold needs --tcp")?.parse()?;
    let count = num(args, "--count", 10)?;
    let seconds = num(args, "--seconds", 5)?.min(600);
    let interval = Duration::from_millis(num(args, "--interval-ms", 100)?.max(1));
    let timeout = Duration::from_millis(num(args, "--timeout-ms", 2000)?);
    let mut conns = Vec::new();
    for _ in 0..count {
        let s = TcpStream::connect_timeout(&target, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        // Each message goes out at once (no Nagle wait on the server's delayed ACK).
        s.set_nodelay(true)?;
        conns.push((
            BufReader::new(s.try_clone()?),
            s,
            String::new(),
            0u64,
            None::<String>,
        ));
    }
    if args.iter().any(|a| a == "--ready") {
        // Every connection is established: the caller may act (e.g. kill a director) now.
        println!("connected");
        std::io::stdout().flush()?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0u64;
    while Instant::now() < deadline {
        for (i, (r, w, server, ok, err)) in conns.iter_mut().enumerate() {
            if err.is_some() {
                continue;
            }
            let msg = format!("c{i}-{round}");
            let res = w
                .write_all(format!("{msg}\n").as_bytes())
                .map_err(anyhow::Error::from)
                .and_then(|_| {
                    let mut line = String::new();
                    r.read_line(&mut line)?;
                    parse_reply(&line, &msg)
                });
            match res {
                Ok(name) if server.is_empty() || *server == name => {
                    *server = name;
                    *ok += 1;
                }
                Ok(name) => *err = Some(format!("moved from {server} to {name}")),
                Err(e) => *err = Some(format!("{e:#}")),
            }
        }
        round += 1;
        std::thread::sleep(interval);
    }
    let report: Vec<serde_json::Value> = conns
        .iter()
        .map(|(_, _, server, ok, err)| serde_json::json!({ "server": server, "ok": ok, "error": err }))
        .collect();
    let broken = conns.iter().filter(|c| c.4.is_some()).count();
    println!(
        "{}",
        serde_json::json!({ "conns": report, "broken": broken })
    );
    Ok(())
}

/// Prints frames seen on an interface. With `--ip-proto P`, only IPv4/IPv6 frames whose
/// (outer) protocol / next header is P.
fn capture(args: &[String]) -> Result<()> {
    let iface = arg(args, "--iface").unwrap_or_else(|| "eth0".into());
    let count = num(args, "--count", 1)? as usize;
    let ms = num(args, "--ms", 2000)?.min(60_000);
    let want_proto = arg(args, "--ip-proto")
        .map(|p| p.parse::<u8>())
        .transpose()?;
    let c = std::ffi::CString::new(iface.clone())?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the descriptor is closed at exit.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: binding with a valid sockaddr_ll.
    let r = unsafe {
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if r < 0 {
        bail!("bind: {}", std::io::Error::last_os_error());
    }
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_millis(ms);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 65536];
    while frames.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
        if n <= 0 {
            continue;
        }
        // SAFETY: reading into our buffer of the given length.
        let len = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if len <= 0 {
            continue;
        }
        let f = &buf[..len as usize];
        let ip_proto = match (f.get(12), f.get(13)) {
            (Some(0x08), Some(0x00)) => f.get(23).copied(),
            (Some(0x86), Some(0xdd)) => f.get(20).copied(),
            _ => None,
        };
        if want_proto.is_some() && ip_proto != want_proto {
            continue;
        }
        frames.push(f.iter().map(|b| format!("{b:02x}")).collect::<String>());
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    println!("{}", serde_json::json!({ "frames": frames }));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Drill tools: observe, ping, announce.
// ---------------------------------------------------------------------------------------------

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn stop_requested() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

extern "C" fn on_stop_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Stop on SIGTERM/SIGINT, and on EOF of stdin when stdin is a pipe or a terminal (not
/// /dev/null, which is at EOF from the start).
fn install_stop_triggers() {
    // SAFETY: a zeroed sigaction with a handler that only stores to an atomic is valid.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
    }
    // SAFETY: fstat on fd 0 into a zeroed stat buffer; isatty has no preconditions.
    let watch = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(0, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO)
            || libc::isatty(0) == 1
    };
    if watch {
        std::thread::spawn(|| {
            use std::io::Read;
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin();
            // Bounded by EOF or the process's exit.
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            STOP.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
}

fn ifindex_of(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface)?;
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if ifindex == 0 {
        bail!("no interface {iface}");
    }
    Ok(ifindex)
}

fn ifname_of(ifindex: i32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex as u32, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// An AF_PACKET raw socket for all protocols, bound to `ifindex` or to every interface of the
/// namespace (`None`).
fn packet_socket(ifindex: Option<u32>) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // A large receive buffer so a burst of traffic during a drill is not dropped (root can
    // force it past rmem_max).
    let size: libc::c_int = 16 << 20;
    // SAFETY: setsockopt with a c_int value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    if let Some(ifindex) = ifindex {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding with a valid sockaddr_ll.
        let r = unsafe {
            libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r < 0 {
            bail!("bind: {}", std::io::Error::last_os_error());
        }
    }
    Ok(owned)
}

fn realtime_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// One frame without blocking: its length, where it came from, and its SO_TIMESTAMPNS receive
/// time in µs (CLOCK_REALTIME) if the kernel attached one.
fn recv_stamped(fd: i32, buf: &mut [u8]) -> Option<(usize, libc::sockaddr_ll, Option<u64>)> {
    // SAFETY: zeroed sockaddr_ll / msghdr are valid; every pointer set below refers to a
    // live local of the stated size, and the cmsg walk stays within the control buffer the
    // kernel filled (msg_controllen).
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut sll as *mut libc::sockaddr_ll).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control);
        let len = libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT);
        if len <= 0 {
            return None;
        }
        let mut stamp = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Some((len as usize, sll, stamp))
    }
}

fn frame_hash(f: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write(f);
    h.finish()
}

/// See the module docs. Capturing on a bridge: an AF_PACKET socket bound to the bridge device
/// only sees frames delivered *to* the bridge (broadcast/multicast, or everything once the
/// bridge is promiscuous), with no hint of the port; bound to nothing it sees each frame on its
/// ingress port, on every egress port (PACKET_OUTGOING) and, for floods, on the bridge. So we
/// bind to nothing, take ingress copies on the bridge's ports as the frames, and use the
/// egress copies only to note where a claim was delivered.
fn observe(args: &[String]) -> Result<()> {
    use fulcrum_tests::drill;
    use std::os::fd::AsRawFd;
    let iface = arg(args, "--iface").unwrap_or_else(|| "br0".into());
    let ms = num(args, "--ms", 10_000)?.min(600_000);
    let max_events = num(args, "--max-events", 100_000)? as usize;
    let vips = arg_values(args, "--vip")
        .iter()
        .map(|v| {
            v.parse::<std::net::IpAddr>()
                .with_context(|| format!("--vip {v}"))
        })
        .collect::<Result<Vec<_>>>()?;
    if vips.is_empty() {
        bail!("observe needs at least one --vip");
    }
    let directors = arg_values(args, "--director-mac")
        .iter()
        .map(|m| drill::parse_mac(m))
        .collect::<Result<Vec<_>>>()?;
    let classifier = drill::Classifier::new(vips, &directors);
    let ifindex = ifindex_of(&iface)?;
    let bridge = std::path::Path::new("/sys/class/net")
        .join(&iface)
        .join("bridge")
        .exists();
    let sock = packet_socket(if bridge { None } else { Some(ifindex) })?;
    let fd = sock.as_raw_fd();
    // Bridge ports by ifindex (None: not a port of ours), learned as frames arrive so hosts
    // attached later are covered too.
    let mut ports: std::collections::HashMap<i32, Option<String>> =
        std::collections::HashMap::new();
    let brif = std::path::Path::new("/sys/class/net")
        .join(&iface)
        .join("brif");
    // Kernel receive timestamps (CLOCK_REALTIME), mapped onto the monotonic clock with the
    // offset between the two clocks at start: the observer's wake-up latency and batching then
    // do not shift or merge event times.
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a c_int value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as u32,
        );
    }
    install_stop_triggers();
    let t0 = drill::mono_us();
    let realtime_offset = realtime_us().saturating_sub(t0);
    println!("ready");
    std::io::stdout().flush()?;
    let deadline = t0 + ms * 1000;
    let mut events: Vec<drill::Event> = Vec::new();
    // (frame hash, event index) of recent claims, to match their egress copies.
    let mut recent: std::collections::VecDeque<(u64, usize)> = std::collections::VecDeque::new();
    let mut ignored: BTreeMap<String, u64> = BTreeMap::new();
    let mut frames = 0u64;
    let mut stamped = 0u64;
    let mut truncated = false;
    let mut buf = vec![0u8; 65536];
    // Each round waits ≤ 50 ms or reads ≤ 512 frames; the round count bounds the loop too.
    let max_rounds = ms * 100 + 1000;
    for _ in 0..max_rounds {
        let now = drill::mono_us();
        if now >= deadline || stop_requested() {
            break;
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = ((deadline - now) / 1000).clamp(1, 50) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if n <= 0 {
            continue;
        }
        for _ in 0..512 {
            let Some((len, sll, stamp)) = recv_stamped(fd, &mut buf) else {
                break;
            };
            // The kernel's receive time on the monotonic axis, else now.
            let t_us = stamp
                .map(|rt| rt.saturating_sub(realtime_offset))
                .unwrap_or_else(drill::mono_us)
                .saturating_sub(t0);
            let f = &buf[..len];
            let outgoing = sll.sll_pkttype == libc::PACKET_OUTGOING;
            let port = if bridge {
                let p = ports.entry(sll.sll_ifindex).or_insert_with(|| {
                    ifname_of(sll.sll_ifindex).filter(|name| brif.join(name).exists())
                });
                let Some(p) = p.clone() else { continue };
                if outgoing {
                    let h = frame_hash(f);
                    if let Some(&(_, idx)) = recent
                        .iter()
                        .rev()
                        .find(|(rh, idx)| *rh == h && !events[*idx].delivered_to.contains(&p))
                    {
                        events[idx].delivered_to.push(p);
                    }
                    continue;
                }
                Some(p)
            } else {
                None
            };
            frames += 1;
            stamped += u64::from(stamp.is_some());
            match classifier.classify(f) {
                Some(drill::Seen::Claim {
                    kind,
                    vip,
                    mac,
                    lladdr,
                }) => {
                    if events.len() >= max_events {
                        truncated = true;
                        continue;
                    }
                    if port.is_some() {
                        recent.push_back((frame_hash(f), events.len()));
                        if recent.len() > 256 {
                            recent.pop_front();
                        }
                    }
                    events.push(drill::Event {
                        t_us,
                        kind,
                        vip,
                        mac: drill::fmt_mac(&mac),
                        lladdr: lladdr.map(|l| drill::fmt_mac(&l)),
                        port,
                        delivered_to: Vec::new(),
                    });
                }
                Some(drill::Seen::IgnoredFromVip { mac, .. }) => {
                    *ignored.entry(drill::fmt_mac(&mac)).or_default() += 1;
                }
                None => {}
            }
        }
    }
    // SAFETY: zeroed tpacket_stats is a valid out-parameter of the size given.
    let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
    let mut slen = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
    // SAFETY: getsockopt into our struct.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_STATISTICS,
            (&mut stats as *mut libc::tpacket_stats).cast(),
            &mut slen,
        );
    }
    let doc = serde_json::json!({
        "iface": iface,
        "t0_mono_us": t0,
        "duration_us": drill::mono_us() - t0,
        "frames": frames,
        "kernel_stamped": stamped,
        "kernel_drops": stats.tp_drops,
        "truncated": truncated,
        "from_vip_ignored": ignored,
        "events": events.iter().map(drill::Event::to_json).collect::<Vec<_>>(),
    });
    println!("{doc}");
    std::io::stdout().flush()?;
    Ok(())
}

#[derive(Default)]
struct PingStats {
    sent: u64,
    received: u64,
    duplicates: u64,
    send_errors: u64,
    /// Reply arrival times, µs since start.
    replies_us: Vec<u64>,
    servers: BTreeMap<String, u64>,
    last_server: Option<String>,
    server_changes: u64,
    connects: u64,
    connect_failures: u64,
    errors: Vec<String>,
}

impl PingStats {
    fn reply(&mut self, t_us: u64, server: String) {
        self.received += 1;
        self.replies_us.push(t_us);
        if self.last_server.as_ref().is_some_and(|s| *s != server) {
            self.server_changes += 1;
        }
        *self.servers.entry(server.clone()).or_default() += 1;
        self.last_server = Some(server);
    }

    fn error(&mut self, t_us: u64, e: impl std::fmt::Display) {
        if self.errors.len() < 20 {
            self.errors
                .push(format!("{:.1} ms: {e}", t_us as f64 / 1000.0));
        }
    }
}

fn ping(args: &[String]) -> Result<()> {
    use fulcrum_tests::drill::mono_us;
    let (proto, target) = match (arg(args, "--udp"), arg(args, "--tcp")) {
        (Some(u), None) => ("udp", u),
        (None, Some(t)) => ("tcp", t),
        _ => bail!("ping needs one of --udp or --tcp"),
    };
    let addr: SocketAddr = target.parse().context("target")?;
    let interval_ms = num(args, "--interval-ms", 5)?.clamp(1, 10_000);
    let ms = num(args, "--ms", 5000)?.min(600_000);
    let timeout_ms = num(args, "--timeout-ms", 1000)?.clamp(1, 60_000);
    let gap_ms = num(args, "--gap-ms", (10 * interval_ms).max(20))?;
    install_stop_triggers();
    let t0 = mono_us();
    println!("ready");
    std::io::stdout().flush()?;
    let mut st = PingStats::default();
    let end_us = ms * 1000;
    let interval_us = interval_ms * 1000;
    if proto == "udp" {
        ping_udp(&mut st, addr, t0, end_us, interval_us)?;
    } else {
        ping_tcp(&mut st, addr, t0, end_us, interval_us, timeout_ms * 1000);
    }
    let duration_us = mono_us() - t0;
    let ms_of = |us: u64| us as f64 / 1000.0;
    let mut max_gap = 0u64;
    let mut gaps = Vec::new();
    for w in st.replies_us.windows(2) {
        let d = w[1] - w[0];
        max_gap = max_gap.max(d);
        if d > gap_ms * 1000 {
            gaps.push(serde_json::json!({ "from_ms": ms_of(w[0]), "to_ms": ms_of(w[1]) }));
        }
    }
    let tail = match st.replies_us.last() {
        Some(&l) => duration_us.saturating_sub(l),
        None => duration_us,
    };
    let doc = serde_json::json!({
        "proto": proto,
        "target": target,
        "t0_mono_us": t0,
        "duration_ms": ms_of(duration_us),
        "interval_ms": interval_ms,
        "sent": st.sent,
        "received": st.received,
        "lost": st.sent.saturating_sub(st.received),
        "duplicates": st.duplicates,
        "send_errors": st.send_errors,
        "max_gap_ms": ms_of(max_gap),
        "gaps": gaps,
        "first_reply_after_ms": st.replies_us.first().map(|&t| ms_of(t)),
        "last_reply_ms": st.replies_us.last().map(|&t| ms_of(t)),
        "tail_gap_ms": ms_of(tail),
        "servers": st.servers,
        "server_changes": st.server_changes,
        "connects": st.connects,
        "reconnects": st.connects.saturating_sub(1),
        "connect_failures": st.connect_failures,
        "errors": st.errors,
    });
    println!("{doc}");
    std::io::stdout().flush()?;
    Ok(())
}

/// "NAME ping-SEQ" → (NAME, SEQ).
fn parse_ping_reply(reply: &str) -> Option<(String, u64)> {
    let (name, echoed) = reply.trim_end().split_once(' ')?;
    let seq = echoed.strip_prefix("ping-")?.parse().ok()?;
    Some((name.to_string(), seq))
}

fn ping_udp(
    st: &mut PingStats,
    addr: SocketAddr,
    t0: u64,
    end_us: u64,
    interval_us: u64,
) -> Result<()> {
    use fulcrum_tests::drill::mono_us;
    use std::os::fd::AsRawFd;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let s = UdpSocket::bind(bind)?;
    s.set_nonblocking(true)?;
    let mut answered: Vec<bool> = Vec::new();
    let mut next_send = 0u64;
    let mut buf = [0u8; 2048];
    // Each round sends once or waits ≥ 1 ms (or ≤ 100 ms); the count bounds it too.
    let max_rounds = (end_us / 1000) * 4 + 10_000;
    for _ in 0..max_rounds {
        let now = mono_us() - t0;
        if now >= end_us || stop_requested() {
            break;
        }
        if now >= next_send {
            let msg = format!("ping-{}", st.sent);
            if let Err(e) = s.send_to(msg.as_bytes(), addr) {
                st.send_errors += 1;
                st.error(now, format_args!("send: {e}"));
            }
            st.sent += 1;
            answered.push(false);
            next_send += interval_us;
            if next_send <= now {
                // Fell behind (a stall): no catch-up burst.
                next_send = now + interval_us;
            }
        }
        let wait_us = next_send.min(end_us).saturating_sub(mono_us() - t0);
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let wait_ms = wait_us.div_ceil(1000).min(100) as i32;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if n <= 0 {
            continue;
        }
        for _ in 0..1024 {
            let (len, from) = match s.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // E.g. ECONNREFUSED from an ICMP error: note it, keep going.
                    st.error(mono_us() - t0, format_args!("recv: {e}"));
                    break;
                }
            };
            let t = mono_us() - t0;
            if from != addr {
                continue;
            }
            let Some((name, seq)) = parse_ping_reply(&String::from_utf8_lossy(&buf[..len])) else {
                st.error(t, "unexpected reply");
                continue;
            };
            match answered.get_mut(seq as usize) {
                Some(a) if !*a => {
                    *a = true;
                    st.reply(t, name);
                }
                Some(_) => st.duplicates += 1,
                None => st.error(t, format_args!("reply to unsent {seq}")),
            }
        }
    }
    Ok(())
}

fn ping_tcp(
    st: &mut PingStats,
    addr: SocketAddr,
    t0: u64,
    end_us: u64,
    interval_us: u64,
    timeout_us: u64,
) {
    use fulcrum_tests::drill::mono_us;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    let mut next_tick = 0u64;
    let max_rounds = (end_us / 1000) * 4 + 10_000;
    for _ in 0..max_rounds {
        let now = mono_us() - t0;
        if now >= end_us || stop_requested() {
            break;
        }
        if now < next_tick {
            std::thread::sleep(Duration::from_micros((next_tick - now).min(100_000)));
            continue;
        }
        next_tick += interval_us;
        if next_tick <= now {
            next_tick = now + interval_us;
        }
        if conn.is_none() {
            let limit = Duration::from_micros(timeout_us.min(end_us - now).max(1000));
            match TcpStream::connect_timeout(&addr, limit).and_then(|s| {
                s.set_nodelay(true)?;
                let r = s.try_clone()?;
                Ok((s, BufReader::new(r)))
            }) {
                Ok(c) => {
                    st.connects += 1;
                    conn = Some(c);
                }
                Err(e) => {
                    st.connect_failures += 1;
                    st.error(mono_us() - t0, format_args!("connect: {e}"));
                    continue;
                }
            }
        }
        let Some((w, r)) = conn.as_mut() else {
            continue;
        };
        let seq = st.sent;
        st.sent += 1;
        if let Err(e) = w.write_all(format!("ping-{seq}\n").as_bytes()) {
            st.send_errors += 1;
            st.error(mono_us() - t0, format_args!("write: {e}"));
            conn = None;
            continue;
        }
        // Wait for the echo in short slices (so a stop request is noticed), up to the timeout.
        let reply_deadline = (mono_us() - t0 + timeout_us).min(end_us);
        let mut line = String::new();
        let mut outcome: Option<std::result::Result<(), String>> = None;
        for _ in 0..(timeout_us / 50_000 + 2) {
            let left = reply_deadline.saturating_sub(mono_us() - t0);
            if left == 0 || stop_requested() {
                break;
            }
            if let Err(e) = r
                .get_ref()
                .set_read_timeout(Some(Duration::from_micros(left.clamp(1000, 50_000))))
            {
                outcome = Some(Err(format!("set timeout: {e}")));
                break;
            }
            match r.read_line(&mut line) {
                Ok(0) => {
                    outcome = Some(Err("connection closed".into()));
                    break;
                }
                Ok(_) => {
                    outcome = Some(match parse_ping_reply(&line) {
                        Some((name, s)) if s == seq => {
                            st.reply(mono_us() - t0, name);
                            Ok(())
                        }
                        _ => Err(format!("unexpected reply {line:?}")),
                    });
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    outcome = Some(Err(format!("read: {e}")));
                    break;
                }
            }
        }
        match outcome {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                st.error(mono_us() - t0, e);
                conn = None;
            }
            None if stop_requested() || mono_us() - t0 >= end_us => {}
            None => {
                st.error(mono_us() - t0, "reply timeout");
                conn = None;
            }
        }
    }
}

fn announce(args: &[String]) -> Result<()> {
    use fulcrum_tests::drill;
    let iface = arg(args, "--iface").unwrap_or_else(|| "eth0".into());
    let count = num(args, "--count", 1)?.clamp(1, 1000);
    let interval = Duration::from_millis(num(args, "--interval-ms", 0)?.min(10_000));
    let reply = args.iter().any(|a| a == "--reply");
    let no_announce = args.iter().any(|a| a == "--no-announce");
    let mac = match arg(args, "--mac") {
        Some(m) => drill::parse_mac(&m)?,
        None => drill::parse_mac(&std::fs::read_to_string(format!(
            "/sys/class/net/{iface}/address"
        ))?)?,
    };
    let dst_mac = match arg(args, "--dst-mac") {
        Some(m) => drill::parse_mac(&m)?,
        None => drill::BROADCAST,
    };
    let to = arg(args, "--from-vip-to")
        .map(|t| t.parse::<std::net::IpAddr>())
        .transpose()
        .context("--from-vip-to")?;
    let mut frames = Vec::new();
    for v in arg_values(args, "--vip") {
        let vip: std::net::IpAddr = v.parse().with_context(|| format!("--vip {v}"))?;
        match vip {
            _ if no_announce => {}
            std::net::IpAddr::V4(a) => frames.push(drill::garp_frame(mac, a, reply)),
            std::net::IpAddr::V6(a) => frames.push(drill::unsolicited_na_frame(mac, a)),
        }
        if let Some(to) = to
            && to.is_ipv4() == vip.is_ipv4()
        {
            frames.push(drill::udp_frame(mac, dst_mac, vip, to, b"from-vip"));
        }
    }
    if frames.is_empty() {
        bail!("announce: nothing to send (no --vip, or --no-announce without --from-vip-to)");
    }
    let ifindex = ifindex_of(&iface)?;
    use std::os::fd::AsRawFd;
    let sock = packet_socket(Some(ifindex))?;
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex as i32;
    sll.sll_halen = 6;
    for round in 0..count {
        if round > 0 {
            std::thread::sleep(interval);
        }
        for f in &frames {
            sll.sll_addr[..6].copy_from_slice(&f[..6]);
            // SAFETY: sending our buffer to a valid sockaddr_ll.
            let n = unsafe {
                libc::sendto(
                    sock.as_raw_fd(),
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if n < 0 {
                bail!("sendto: {}", std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}
