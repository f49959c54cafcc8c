//! How tollgate sets up Pingora, through its public API, where Pingora's defaults cost more
//! per request than tollgate needs. Each choice was measured A/B in one load-harness run
//! (BENCHMARKS.md, *Pingora tuned*). `TOLLGATE_TUNING` overrides them for such a run:
//! `TOLLGATE_TUNING=work_stealing=1,downstream_modules=1,l4_read_buffer=65536,keepalive_pool=128`
//! (and `peer_timeouts=0`, which only measures what the upstream timeouts cost, and
//! `fast_header_timer=0`, the request header deadline on a tokio timer; `keepalive_timer=1`,
//! Pingora's keep-alive timer around every idle read as before issue 24;
//! `pool_idle_timeout=SECONDS`, a pooled upstream connection's idle timer where the config
//! sets none; `pingora_hop_by_hop=1`, Pingora's own hop-by-hop strip on HTTP/1 upstream
//! requests instead of tollgate's).

/// The settings; `Default` is what tollgate ships.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Tokio's work-stealing runtime (Pingora's default) or one current-thread runtime per
    /// worker thread, with connections pinned to the thread that accepted them.
    pub work_stealing: bool,
    /// Pingora's default downstream modules: a response compression module, disabled, that
    /// still builds a context for every request and runs its hooks on every header and body.
    /// tollgate does not compress responses.
    pub downstream_modules: bool,
    /// The listener's L4 read buffer per connection; `None` for Pingora's (64 KiB).
    pub l4_read_buffer: Option<usize>,
    /// Idle upstream connections kept per worker thread (Pingora's default: 128).
    pub keepalive_pool: usize,
    /// The upstreams' connect, read, write and idle timeouts. Only for measuring what they
    /// cost (a timer per pending I/O and per pooled connection): tollgate always sets them.
    pub peer_timeouts: bool,
    /// The request header deadline on Pingora's coarse shared timer rather than a tokio
    /// timer per request.
    pub fast_header_timer: bool,
    /// Pingora's keep-alive timer (`set_keepalive(Some(keepalive_timeout))`) around every
    /// idle read. Off: the request header deadline already bounds the idle wait.
    pub keepalive_timer: bool,
    /// An idle timer for pooled upstream connections where the upstream sets no
    /// `idle_timeout` (seconds). Only for measuring what it costs.
    pub pool_idle_timeout: Option<u64>,
    /// Pingora's default `HttpUpstreamRequestPolicy` on HTTP/1 peers, which strips hop-by-hop
    /// fields with a dozen map removals per request. Off: the peers preserve, and
    /// tollgate strips the same fields in one scan (`proxy/hop_by_hop.rs`). Only for
    /// measuring the difference.
    pub pingora_hop_by_hop: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            work_stealing: true,
            downstream_modules: false,
            l4_read_buffer: None,
            keepalive_pool: 128,
            peer_timeouts: true,
            fast_header_timer: true,
            keepalive_timer: false,
            pool_idle_timeout: None,
            pingora_hop_by_hop: false,
        }
    }
}

static CURRENT: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();

/// The settings this process runs with (set once at start; the default until then).
pub fn current() -> Tuning {
    CURRENT.get().copied().unwrap_or_default()
}

impl Tuning {
    /// The shipped settings, with `TOLLGATE_TUNING`'s overrides.
    pub fn from_env() -> Self {
        let mut tuning = Tuning::default();
        if let Ok(spec) = std::env::var("TOLLGATE_TUNING") {
            tuning.apply(&spec);
        }
        let _ = CURRENT.set(tuning);
        tuning
    }

    /// Applies `name=value,...`; unknown names and bad values are ignored with a warning.
    pub fn apply(&mut self, spec: &str) {
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, value)) = item.split_once('=') else {
                tracing::warn!("TOLLGATE_TUNING: `{item}` is not name=value");
                continue;
            };
            let flag = || value == "1" || value == "true";
            let number = value.parse::<usize>().ok();
            match (name, number) {
                ("work_stealing", _) => self.work_stealing = flag(),
                ("downstream_modules", _) => self.downstream_modules = flag(),
                ("l4_read_buffer", Some(n)) => self.l4_read_buffer = Some(n),
                ("keepalive_pool", Some(n)) => self.keepalive_pool = n,
                ("peer_timeouts", _) => self.peer_timeouts = flag(),
                ("fast_header_timer", _) => self.fast_header_timer = flag(),
                ("keepalive_timer", _) => self.keepalive_timer = flag(),
                ("pool_idle_timeout", Some(n)) => self.pool_idle_timeout = Some(n as u64),
                ("pingora_hop_by_hop", _) => self.pingora_hop_by_hop = flag(),
                _ => tracing::warn!("TOLLGATE_TUNING: `{item}` is not understood"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_apply_by_name() {
        let mut t = Tuning::default();
        t.apply("work_stealing=0, downstream_modules=1,l4_read_buffer=0,keepalive_pool=8,x=1,peer_timeouts=0,fast_header_timer=0,keepalive_timer=1,pool_idle_timeout=60,pingora_hop_by_hop=1");
        assert_eq!(
            t,
            Tuning {
                work_stealing: false,
                downstream_modules: true,
                l4_read_buffer: Some(0),
                keepalive_pool: 8,
                peer_timeouts: false,
                fast_header_timer: false,
                keepalive_timer: true,
                pool_idle_timeout: Some(60),
                pingora_hop_by_hop: true,
            }
        );
    }
}
