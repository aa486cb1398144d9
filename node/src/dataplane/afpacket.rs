//! AF_PACKET I/O: a TPACKET_V3 receive ring (frames are read and rewritten in place in the
//! mmap'd ring) and batched transmit with `sendmmsg` and `PACKET_QDISC_BYPASS`.
//!
//! One [`PacketSocket`] per worker thread; workers join one `PACKET_FANOUT` group so the
//! kernel spreads flows over them by hash. Nothing here allocates after `open`.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::atomic::fence;

use super::filter::Insn;

/// Ring geometry. Blocks are handed to userspace whole; a block is returned to the kernel
/// when it is full or `retire_ms` after its first frame, whichever comes first.
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    pub block_size: u32,
    pub block_count: u32,
    pub frame_size: u32,
    pub retire_ms: u32,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_size: 1 << 20,
            block_count: 16,
            frame_size: 2048,
            retire_ms: 1,
        }
    }
}

/// Maximum frames sent with one `sendmmsg`.
pub const TX_BATCH: usize = 64;

pub struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
    ring: NonNull<u8>,
    ring_len: usize,
    cfg: RingConfig,
    next_block: usize,
}

// SAFETY: the ring is owned by this socket and only touched through `&mut self`.
unsafe impl Send for PacketSocket {}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T of the size passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The interface index of `name` (in the current network namespace).
pub fn ifindex(name: &str) -> io::Result<i32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: `c` is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name:?}: {}", io::Error::last_os_error()),
        ));
    }
    Ok(idx as i32)
}

/// The hardware address of interface `name`.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path)?;
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{path}: {text:?}"))
        })?;
        *b =
            u8::from_str_radix(p, 16).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    }
    Ok(mac)
}

/// The interface's MTU.
pub fn mtu(name: &str) -> io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))?;
    text.trim()
        .parse()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("mtu of {name}: {e}")))
}

impl PacketSocket {
    /// Opens a receive ring on `ifname`. Needs CAP_NET_RAW.
    pub fn open(ifname: &str, cfg: RingConfig) -> io::Result<PacketSocket> {
        let ifindex = ifindex(ifname)?;
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let raw = check(unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(proto),
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &(libc::tpacket_versions::TPACKET_V3 as libc::c_int),
        )?;
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.block_size,
            tp_block_nr: cfg.block_count,
            tp_frame_size: cfg.frame_size,
            tp_frame_nr: cfg.block_size / cfg.frame_size * cfg.block_count,
            tp_retire_blk_tov: cfg.retire_ms,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&fd, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        // Transmit straight to the driver: our frames are complete, the qdisc adds nothing.
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        )?;
        let ring_len = cfg.block_size as usize * cfg.block_count as usize;
        let map = |flags: libc::c_int| {
            // SAFETY: mapping the ring the kernel just allocated for this socket.
            unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    ring_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags,
                    fd.as_raw_fd(),
                    0,
                )
            }
        };
        // Locked, so the ring is never paged out; where the memlock limit forbids it (a
        // container without CAP_IPC_LOCK) the ring works unlocked all the same.
        let mut ptr = map(libc::MAP_SHARED | libc::MAP_LOCKED);
        if ptr == libc::MAP_FAILED {
            let locked_err = io::Error::last_os_error();
            ptr = map(libc::MAP_SHARED);
            if ptr == libc::MAP_FAILED {
                return Err(io::Error::other(format!(
                    "mapping the packet ring ({ring_len} bytes): {}",
                    io::Error::last_os_error()
                )));
            }
            tracing::warn!(
                bytes = ring_len,
                "packet ring not locked in memory ({locked_err}); raise the memlock limit or \
                 grant CAP_IPC_LOCK to keep it from being paged out"
            );
        }
        let ring =
            NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let sock = PacketSocket {
            fd,
            ifindex,
            ring,
            ring_len,
            cfg,
            next_block: 0,
        };
        // SAFETY: sockaddr_ll zeroed is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        // SAFETY: binding with a valid sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(sock)
    }

    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// A handle that can replace this socket's filter from another thread.
    pub fn filter_handle(&self) -> io::Result<FilterHandle> {
        Ok(FilterHandle {
            fd: self.fd.try_clone()?,
        })
    }

    /// Replaces the socket filter (atomically, in the kernel).
    pub fn set_filter(&self, prog: &[Insn]) -> io::Result<()> {
        attach_filter(&self.fd, prog)
    }

    /// Joins fanout group `group` (hash mode): flows are spread over the group's sockets.
    pub fn join_fanout(&self, group: u16) -> io::Result<()> {
        let arg: libc::c_int = i32::from(group) | ((libc::PACKET_FANOUT_HASH as i32) << 16);
        setsockopt(&self.fd, libc::SOL_PACKET, libc::PACKET_FANOUT, &arg)
    }

    /// Waits up to `timeout_ms` for the next filled block and hands it out. The block goes
    /// back to the kernel when the returned value is dropped.
    pub fn next_block(&mut self, timeout_ms: i32) -> io::Result<Option<Block<'_>>> {
        let desc = self.block_desc(self.next_block);
        if !Self::block_ready(desc) {
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN | libc::POLLERR,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    return Ok(None);
                }
                return Err(e);
            }
            if !Self::block_ready(desc) {
                return Ok(None);
            }
        }
        fence(Ordering::Acquire);
        self.next_block = (self.next_block + 1) % self.cfg.block_count as usize;
        Ok(Some(Block {
            desc,
            _sock: std::marker::PhantomData,
        }))
    }

    fn block_desc(&self, i: usize) -> NonNull<libc::tpacket_block_desc> {
        // SAFETY: i < block_count, so the offset is inside the mapping.
        unsafe {
            NonNull::new_unchecked(
                self.ring
                    .as_ptr()
                    .add(i * self.cfg.block_size as usize)
                    .cast(),
            )
        }
    }

    fn block_ready(desc: NonNull<libc::tpacket_block_desc>) -> bool {
        // SAFETY: desc points at a block header in our mapping; the kernel flips the status
        // word, so read it volatile.
        let status = unsafe { std::ptr::read_volatile(&(*desc.as_ptr()).hdr.bh1.block_status) };
        status & libc::TP_STATUS_USER != 0
    }

    /// Kernel counters since the last call: (frames received, frames dropped for lack of room).
    pub fn stats(&self) -> io::Result<(u32, u32)> {
        let mut st = libc::tpacket_stats_v3 {
            tp_packets: 0,
            tp_drops: 0,
            tp_freeze_q_cnt: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: getsockopt into a correctly sized struct.
        check(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        })?;
        Ok((st.tp_packets, st.tp_drops))
    }
}

/// Another descriptor of a receive socket, for replacing its filter while the packet thread
/// owns the socket.
pub struct FilterHandle {
    fd: OwnedFd,
}

impl FilterHandle {
    pub fn set_filter(&self, prog: &[Insn]) -> io::Result<()> {
        attach_filter(&self.fd, prog)
    }
}

fn attach_filter(fd: &OwnedFd, prog: &[Insn]) -> io::Result<()> {
    let filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let fprog = libc::sock_fprog {
        len: filters.len() as u16,
        filter: filters.as_ptr().cast_mut(),
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &fprog)
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        unsafe {
            libc::munmap(self.ring.as_ptr().cast(), self.ring_len);
        }
    }
}

/// A transmit-only packet socket bound to one interface.
pub struct TxSocket {
    fd: OwnedFd,
}

impl TxSocket {
    pub fn open(ifname: &str) -> io::Result<TxSocket> {
        let ifindex = ifindex(ifname)?;
        // Protocol 0: this socket receives nothing.
        // SAFETY: plain socket(2).
        let raw = check(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        setsockopt(
            &fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            &1 as &libc::c_int,
        )?;
        // SAFETY: sockaddr_ll zeroed is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex;
        // SAFETY: binding with a valid sockaddr_ll of the size passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(TxSocket { fd })
    }

    /// Sends up to [`TX_BATCH`] frames with one syscall; returns how many the kernel took.
    pub fn send_batch(&self, frames: &[&[u8]]) -> io::Result<usize> {
        let n = frames.len().min(TX_BATCH);
        if n == 0 {
            return Ok(0);
        }
        // SAFETY: all-zero iovec/mmsghdr arrays are valid; filled below.
        let mut iov: [libc::iovec; TX_BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; TX_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iov[i].iov_base = frames[i].as_ptr().cast_mut().cast();
            iov[i].iov_len = frames[i].len();
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let mut sent = 0usize;
        while sent < n {
            // SAFETY: msgs[sent..n] point at iovecs over live frames; the socket is bound,
            // so no destination address is needed.
            let r = unsafe {
                libc::sendmmsg(
                    self.fd.as_raw_fd(),
                    msgs[sent..].as_mut_ptr(),
                    (n - sent) as u32,
                    0,
                )
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    // The device queue is full: what is left is dropped (counted by the caller).
                    io::ErrorKind::WouldBlock => break,
                    _ if e.raw_os_error() == Some(libc::ENOBUFS) => break,
                    _ => return Err(e),
                }
            }
            if r == 0 {
                break;
            }
            sent += r as usize;
        }
        Ok(sent)
    }
}

/// A block of received frames, owned by userspace until dropped.
pub struct Block<'a> {
    desc: NonNull<libc::tpacket_block_desc>,
    _sock: std::marker::PhantomData<&'a mut PacketSocket>,
}

impl Block<'_> {
    pub fn len(&self) -> usize {
        // SAFETY: the block is ours while `self` lives.
        unsafe { (*self.desc.as_ptr()).hdr.bh1.num_pkts as usize }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block's frames, each mutable in place and distinct from the others, valid until
    /// the block is dropped (so they can be queued for a batched send first).
    pub fn frames(&mut self) -> Frames<'_> {
        // SAFETY: the block is ours while `self` lives.
        let (first, count) = unsafe {
            let bh = &(*self.desc.as_ptr()).hdr.bh1;
            (bh.offset_to_first_pkt as usize, bh.num_pkts as usize)
        };
        Frames {
            base: self.desc.as_ptr().cast::<u8>(),
            off: first,
            left: count,
            _block: std::marker::PhantomData,
        }
    }
}

pub struct Frames<'b> {
    base: *mut u8,
    off: usize,
    left: usize,
    _block: std::marker::PhantomData<&'b mut [u8]>,
}

/// A received frame and whether its transport checksum is still unfinished (the sender
/// offloaded it and it never reached a NIC: typical on veth). Such a frame must get its
/// checksum filled in before it leaves again.
pub struct Frame<'b> {
    pub data: &'b mut [u8],
    pub csum_not_ready: bool,
}

impl<'b> Iterator for Frames<'b> {
    type Item = Frame<'b>;

    fn next(&mut self) -> Option<Frame<'b>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // SAFETY: offsets come from the kernel and stay within the block it filled; each
        // frame is a distinct region, so the mutable slices never overlap.
        unsafe {
            let hdr = self.base.add(self.off).cast::<libc::tpacket3_hdr>();
            let snap = (*hdr).tp_snaplen as usize;
            let mac = (*hdr).tp_mac as usize;
            let status = (*hdr).tp_status;
            let frame = std::slice::from_raw_parts_mut(self.base.add(self.off + mac), snap);
            let next = (*hdr).tp_next_offset as usize;
            if next == 0 {
                self.left = 0;
            }
            self.off += next;
            Some(Frame {
                data: frame,
                csum_not_ready: status & libc::TP_STATUS_CSUMNOTREADY != 0,
            })
        }
    }
}

impl Drop for Block<'_> {
    fn drop(&mut self) {
        fence(Ordering::Release);
        // SAFETY: handing the block back: the kernel owns it again from this write on.
        unsafe {
            std::ptr::write_volatile(
                &mut (*self.desc.as_ptr()).hdr.bh1.block_status,
                libc::TP_STATUS_KERNEL,
            );
        }
    }
}
