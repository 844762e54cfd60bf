//! The usual process metrics, as Prometheus' client libraries name them (`process_*`,
//! unprefixed, so dashboards and alerts written for any exporter work): CPU time, resident and
//! virtual memory, open and allowed file descriptors, start time. Read from /proc at each
//! scrape (procfs); where /proc cannot be read (not Linux), the series are left out.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// The process series and the registry they are in.
#[derive(Debug)]
pub struct ProcessMetrics {
    pub registry: Registry,
    cpu_seconds: Gauge<f64, AtomicU64>,
    resident: Gauge,
    virtual_memory: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    start_time: Gauge,
}

impl Default for ProcessMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            cpu_seconds: Gauge::default(),
            resident: Gauge::default(),
            virtual_memory: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            start_time: Gauge::default(),
            registry: Registry::default(),
        };
        // The names every Prometheus client uses; `_total` kept in the name as theirs do
        // (a gauge here: it is read from the kernel, not counted).
        registry.register(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident.clone(),
        );
        registry.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            m.virtual_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        registry.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            m.start_time.clone(),
        );
        Self { registry, ..m }
    }
}

impl ProcessMetrics {
    /// Reads /proc/self; false (and the series untouched) where it cannot.
    pub fn refresh(&self) -> bool {
        let Ok(me) = procfs::process::Process::myself() else {
            return false;
        };
        let Ok(stat) = me.stat() else {
            return false;
        };
        let ticks = procfs::ticks_per_second().max(1);
        self.cpu_seconds
            .set((stat.utime + stat.stime) as f64 / ticks as f64);
        let page = procfs::page_size();
        self.resident.set(clamp(stat.rss.saturating_mul(page)));
        self.virtual_memory.set(clamp(stat.vsize));
        if let Ok(boot) = procfs::boot_time_secs() {
            self.start_time.set(clamp(boot + stat.starttime / ticks));
        }
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(clamp(n as u64));
        }
        if let Ok(limits) = me.limits() {
            if let procfs::process::LimitValue::Value(v) = limits.max_open_files.soft_limit {
                self.max_fds.set(clamp(v));
            }
        }
        true
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
