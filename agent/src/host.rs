//! Host resource readings for metrics and check-ins: CPU, memory, disk, network, temperature,
//! load, uptime, from /proc and /sys (Linux). A reading that is not available is left out.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

/// One reading of the host's resources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStats {
    /// Total CPU time counters (user+nice+system+…, idle) in clock ticks, from /proc/stat.
    pub cpu_ticks: Option<(u64, u64)>,
    /// MemTotal and MemAvailable in bytes.
    pub memory: Option<(u64, u64)>,
    /// Free and total bytes on the data directory's filesystem.
    pub disk: Option<(u64, u64)>,
    /// Received and transmitted bytes over all non-loopback interfaces.
    pub network: Option<(u64, u64)>,
    /// CPU temperature in °C (thermal zone 0).
    pub temperature_c: Option<f64>,
    /// 1-minute load average.
    pub load1: Option<f64>,
    /// Seconds since boot.
    pub uptime_secs: Option<f64>,
    /// The agent's own resident memory, bytes.
    pub agent_rss: Option<u64>,
}

fn first_line(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
}

impl HostStats {
    /// Reads everything it can; `data_dir` chooses the filesystem for the disk gauge.
    pub fn read(data_dir: &Path) -> HostStats {
        let cpu_ticks = first_line("/proc/stat").and_then(|l| {
            let nums: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|n| n.parse().ok())
                .collect();
            let idle = nums.get(3)? + nums.get(4).copied().unwrap_or(0);
            Some((nums.iter().sum(), idle))
        });
        let memory = fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            let field = |name: &str| {
                s.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|n| n.parse::<u64>().ok())
                    .map(|kb| kb * 1024)
            };
            Some((field("MemTotal:")?, field("MemAvailable:")?))
        });
        let disk = match (fs2::available_space(data_dir), fs2::total_space(data_dir)) {
            (Ok(free), Ok(total)) => Some((free, total)),
            _ => None,
        };
        let network = fs::read_to_string("/proc/net/dev").ok().map(|s| {
            s.lines()
                .skip(2)
                .filter_map(|l| l.split_once(':'))
                .filter(|(name, _)| name.trim() != "lo")
                .fold((0u64, 0u64), |(rx, tx), (_, rest)| {
                    let f: Vec<u64> = rest
                        .split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect();
                    (
                        rx + f.first().copied().unwrap_or(0),
                        tx + f.get(8).copied().unwrap_or(0),
                    )
                })
        });
        let temperature_c = first_line("/sys/class/thermal/thermal_zone0/temp")
            .and_then(|t| t.trim().parse::<f64>().ok())
            .map(|m| m / 1000.0);
        let load1 = first_line("/proc/loadavg")
            .and_then(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()));
        let uptime_secs = first_line("/proc/uptime")
            .and_then(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()));
        let agent_rss = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
                .map(|kb| kb * 1024)
        });
        HostStats {
            cpu_ticks,
            memory,
            disk,
            network,
            temperature_c,
            load1,
            uptime_secs,
            agent_rss,
        }
    }

    /// Appends the host gauges in the Prometheus text format.
    pub fn render(&self, out: &mut String) {
        let mut gauge = |name: &str, help: &str, kind: &str, value: Option<f64>| {
            if let Some(v) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
                );
            }
        };
        gauge(
            "fleet_host_cpu_seconds_total",
            "CPU time spent not idle, all cores (clock ticks / 100).",
            "counter",
            self.cpu_ticks.map(|(t, i)| (t - i) as f64 / 100.0),
        );
        gauge(
            "fleet_host_memory_total_bytes",
            "Total memory.",
            "gauge",
            self.memory.map(|m| m.0 as f64),
        );
        gauge(
            "fleet_host_memory_available_bytes",
            "Available memory.",
            "gauge",
            self.memory.map(|m| m.1 as f64),
        );
        gauge(
            "fleet_host_disk_free_bytes",
            "Free bytes on the data directory's filesystem.",
            "gauge",
            self.disk.map(|d| d.0 as f64),
        );
        gauge(
            "fleet_host_disk_total_bytes",
            "Size of the data directory's filesystem.",
            "gauge",
            self.disk.map(|d| d.1 as f64),
        );
        gauge(
            "fleet_host_network_receive_bytes_total",
            "Bytes received, all interfaces but loopback.",
            "counter",
            self.network.map(|n| n.0 as f64),
        );
        gauge(
            "fleet_host_network_transmit_bytes_total",
            "Bytes sent, all interfaces but loopback.",
            "counter",
            self.network.map(|n| n.1 as f64),
        );
        gauge(
            "fleet_host_temperature_celsius",
            "CPU temperature.",
            "gauge",
            self.temperature_c,
        );
        gauge(
            "fleet_host_load1",
            "One-minute load average.",
            "gauge",
            self.load1,
        );
        gauge(
            "fleet_host_uptime_seconds",
            "Seconds since boot.",
            "gauge",
            self.uptime_secs,
        );
        gauge(
            "fleet_agent_resident_memory_bytes",
            "The agent's resident memory.",
            "gauge",
            self.agent_rss.map(|r| r as f64),
        );
    }
}
