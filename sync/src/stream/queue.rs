//! The hand-off from a packet thread to the sync sender.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use crate::conn::ConnEntry;

/// One per packet thread. The thread collects a block's changes in its own vector and hands
/// them over with one uncontended lock; the sender takes them with one lock too. Capacity is
/// reserved up front, so neither side allocates while the sender keeps up; when it does not,
/// changes beyond the capacity are dropped and counted (a later change or refresh of the same
/// flow carries its state again).
#[derive(Debug)]
pub struct ChangeQueue {
    inner: Mutex<Vec<ConnEntry>>,
    cap: usize,
    dropped: AtomicU64,
    /// Off while no sender drains the queue: the packet path then skips the work.
    enabled: AtomicBool,
}

impl ChangeQueue {
    pub fn new(cap: usize) -> ChangeQueue {
        ChangeQueue {
            inner: Mutex::new(Vec::with_capacity(cap)),
            cap,
            dropped: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Relaxed)
    }

    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Relaxed);
        if !on {
            self.lock().clear();
        }
    }

    /// Capacity a producer should reserve for its own per-block vector.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<ConnEntry>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Producer side: moves `local`'s entries in (as many as fit), leaving `local` empty.
    pub fn push_from(&self, local: &mut Vec<ConnEntry>) {
        if local.is_empty() {
            return;
        }
        if !self.enabled() {
            local.clear();
            return;
        }
        let mut q = self.lock();
        let room = self.cap.saturating_sub(q.len());
        let n = local.len().min(room);
        q.extend_from_slice(&local[..n]);
        drop(q);
        if n < local.len() {
            self.dropped.fetch_add((local.len() - n) as u64, Relaxed);
        }
        local.clear();
    }

    /// Consumer side: appends everything queued to `out`.
    pub fn drain_into(&self, out: &mut Vec<ConnEntry>) {
        let mut q = self.lock();
        out.extend_from_slice(&q);
        q.clear();
    }

    /// Changes waiting for the consumer.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Changes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}
