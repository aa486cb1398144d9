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
        _ => bail!("usage: fulcrum-testsrv serve|probe|hold|capture ..."),
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
        if writeln!(w, "{name} {line}").is_err() {
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
        conns.push((
            BufReader::new(s.try_clone()?),
            s,
            String::new(),
            0u64,
            None::<String>,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut round = 0u64;
    while Instant::now() < deadline {
        for (i, (r, w, server, ok, err)) in conns.iter_mut().enumerate() {
            if err.is_some() {
                continue;
            }
            let msg = format!("c{i}-{round}");
            let res = writeln!(w, "{msg}")
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
