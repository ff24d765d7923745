//! Process metrics in the Prometheus convention (`process_*`, no `scenewatch_` prefix, the names
//! client_golang and the other official clients use), read from `/proc/self` at scrape time.
//! Linux only: elsewhere the collector exports nothing. No crate for this: the six values are a
//! few lines of /proc parsing, and the parsers below are pure so tests feed them fixed text.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Reads the process's figures on every scrape.
#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            c.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?)?;
        }
        let gauges: [(&str, &str, Option<f64>); 5] = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors (soft limit)",
                s.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                s.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
            }
        }
        Ok(())
    }
}

/// One reading; a figure that could not be read is `None` and is left out of the scrape.
#[derive(Debug, Default, Clone, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl Sample {
    #[cfg(target_os = "linux")]
    fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        // The kernel reports times in clock ticks and RSS in pages; both sizes are in the aux
        // vector (what sysconf reads, without libc or unsafe). 100 Hz and 4 KiB are the usual values.
        let clk_tck = auxv_value(&auxv, AT_CLKTCK).unwrap_or(100) as f64;
        let page_size = auxv_value(&auxv, AT_PAGESZ).unwrap_or(4096) as f64;
        let boot_time = read("/proc/stat").and_then(|s| parse_boot_time(&s));
        let stat = read("/proc/self/stat").and_then(|s| parse_stat(&s));
        Sample {
            cpu_seconds: stat.map(|s| (s.utime + s.stime) as f64 / clk_tck),
            resident_bytes: stat.map(|s| s.rss_pages as f64 * page_size),
            virtual_bytes: stat.map(|s| s.vsize as f64),
            // The directory's own handle, open while it is read, is counted too (as
            // client_golang does).
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|d| d.count() as f64),
            max_fds: read("/proc/self/limits").and_then(|s| parse_max_fds(&s)),
            start_time_seconds: stat
                .zip(boot_time)
                .map(|(s, boot)| boot as f64 + s.start_ticks as f64 / clk_tck),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn read() -> Self {
        Sample::default()
    }
}

/// `AT_PAGESZ` and `AT_CLKTCK` from `<elf.h>`.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
const AT_PAGESZ: usize = 6;
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
const AT_CLKTCK: usize = 17;

/// The value of `key` in an aux vector: (key, value) pairs of native words, ended by key 0.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
fn auxv_value(auxv: &[u8], key: usize) -> Option<usize> {
    const W: usize = std::mem::size_of::<usize>();
    let word = |b: &[u8]| b.try_into().ok().map(usize::from_ne_bytes);
    auxv.chunks_exact(2 * W)
        .map_while(|pair| Some((word(&pair[..W])?, word(&pair[W..])?)))
        .take_while(|&(k, _)| k != 0)
        .find(|&(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The fields of `/proc/self/stat` that the metrics need (proc(5)).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
fn parse_stat(stat: &str) -> Option<Stat> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts with field 3 (state), so field n is at index n - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: the boot time in seconds since the Unix epoch.
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files from `/proc/self/limits` (`None` when "unlimited").
#[cfg_attr(
    not(target_os = "linux"),
    allow(dead_code, reason = "read on Linux only")
)]
fn parse_max_fds(limits: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace()
        .nth(3)?
        .parse::<u64>()
        .ok()
        .map(|v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_parentheses_and_spaces_in_the_command_name() {
        // A real line with the command renamed to "a) (b c"; fields 14, 15, 22, 23, 24 are
        // 250, 40, 1234567, 1048576000, 2560.
        let line = "4242 (a) (b c) S 1 4242 4242 0 -1 4194560 1911 0 0 0 250 40 0 0 20 0 9 0 \
                    1234567 1048576000 2560 18446744073709551615 1 1 0 0 0 0 0 4096 17639 0 0 0 \
                    17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 40,
                start_ticks: 1234567,
                vsize: 1048576000,
                rss_pages: 2560,
            })
        );
        assert_eq!(parse_stat("4242 (x) S 1 2"), None, "truncated");
    }

    #[test]
    fn parses_boot_time_limits_and_the_aux_vector() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nintr 5\nbtime 1764662400\nprocesses 9\n"),
            Some(1764662400)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024.0));
        assert_eq!(
            parse_max_fds(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
        let mut auxv = Vec::new();
        for (k, v) in [
            (AT_PAGESZ, 16384usize),
            (AT_CLKTCK, 250),
            (0, 0),
            (AT_CLKTCK, 1),
        ] {
            auxv.extend_from_slice(&k.to_ne_bytes());
            auxv.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(auxv_value(&auxv, AT_PAGESZ), Some(16384));
        assert_eq!(
            auxv_value(&auxv, AT_CLKTCK),
            Some(250),
            "stops at the end marker"
        );
        assert_eq!(auxv_value(&auxv, 99), None);
        assert_eq!(auxv_value(&auxv[..5], AT_PAGESZ), None, "truncated");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = Sample::read();
        assert!(s.cpu_seconds.is_some_and(|v| v >= 0.0), "{s:?}");
        assert!(s.resident_bytes.is_some_and(|v| v > 0.0), "{s:?}");
        assert!(
            s.virtual_bytes
                .zip(s.resident_bytes)
                .is_some_and(|(v, r)| v >= r),
            "{s:?}"
        );
        // stdin, stdout, stderr and the directory handle at least.
        assert!(s.open_fds.is_some_and(|v| v >= 3.0), "{s:?}");
        assert!(
            s.max_fds.is_none_or(|m| m >= s.open_fds.unwrap_or(0.0)),
            "{s:?}"
        );
        // After 2020 and not in the future of this reading.
        let now = crate::clock::wall_now_ms() as f64 / 1000.0;
        assert!(
            s.start_time_seconds
                .is_some_and(|t| t > 1.577e9 && t <= now + 1.0),
            "{s:?}"
        );
    }
}
