//! Prometheus metrics over HTTP (`[metrics] listen`): `GET /metrics` in the text exposition
//! format 0.0.4.
//!
//! - `text`: the exposition writer ([`MetricsWriter`]): families, HELP/TYPE, escaping.
//! - `collect`: what `fulcrumd` exposes — node, Raft, VIP ownership, engine counters.
//! - `http` / `server`: a minimal HTTP/1.1 responder on a tokio listener.
//!
//! Scrapes only read what already exists (atomic counters, the Raft metrics watch, the
//! applied state): the packet path does no extra work for metrics.
//!
//! # Adding metrics
//! Anything that implements [`MetricsSource`] — a closure `Fn(&mut MetricsWriter)` does — can
//! be registered with [`Metrics::add`], before or after the server started; each scrape calls
//! every source. A source writes one sample per call:
//!
//! ```
//! use fulcrum_node::metrics::{Metrics, MetricsWriter};
//! let metrics = Metrics::default();
//! metrics.add(|w: &mut MetricsWriter| {
//!     w.counter("fulcrum_sync_sent_entries_total", "Entries sent to backups.", &[("peer", "2")], 42u64);
//!     w.gauge("fulcrum_sync_lag_seconds", "Replication lag.", &[], 0.004);
//! });
//! assert!(metrics.render().contains("fulcrum_sync_lag_seconds 0.004\n"));
//! ```

mod collect;
pub mod http;
pub mod server;
pub mod text;

use std::sync::Arc;
use std::sync::RwLock;

pub use collect::EngineSource;
pub use collect::LeaderTracker;
pub use collect::NodeSource;
pub use collect::RaftSource;
pub use collect::VipSource;
pub use collect::node_metrics;
pub use text::Kind;
pub use text::MetricsWriter;
pub use text::Value;

/// Something that writes metric samples at scrape time.
pub trait MetricsSource: Send + Sync {
    fn write(&self, w: &mut MetricsWriter);
}

impl<F> MetricsSource for F
where
    F: Fn(&mut MetricsWriter) + Send + Sync,
{
    fn write(&self, w: &mut MetricsWriter) {
        self(w)
    }
}

/// The node's metric sources; cheap to clone (one shared list).
#[derive(Clone, Default)]
pub struct Metrics {
    sources: Arc<RwLock<Vec<Arc<dyn MetricsSource>>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.sources.read().map(|s| s.len()).unwrap_or(0);
        f.debug_struct("Metrics").field("sources", &n).finish()
    }
}

impl Metrics {
    /// Registers a source; later scrapes include it.
    pub fn add(&self, source: impl MetricsSource + 'static) {
        self.add_shared(Arc::new(source));
    }

    pub fn add_shared(&self, source: Arc<dyn MetricsSource>) {
        self.sources
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(source);
    }

    /// One scrape: every source's samples as exposition text.
    pub fn render(&self) -> String {
        let sources: Vec<Arc<dyn MetricsSource>> = self
            .sources
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut w = MetricsWriter::new();
        for s in &sources {
            s.write(&mut w);
        }
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_added_later_show_up_and_families_merge_across_sources() {
        let m = Metrics::default();
        m.add(|w: &mut MetricsWriter| w.gauge("g", "G.", &[("s", "a")], 1u64));
        assert_eq!(m.render(), "# HELP g G.\n# TYPE g gauge\ng{s=\"a\"} 1\n");
        let m2 = m.clone();
        m2.add(|w: &mut MetricsWriter| w.gauge("g", "G.", &[("s", "b")], 2u64));
        assert_eq!(
            m.render(),
            "# HELP g G.\n# TYPE g gauge\ng{s=\"a\"} 1\ng{s=\"b\"} 2\n"
        );
    }
}
