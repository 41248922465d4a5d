//! Benchmarks and robustness harnesses, apart from the code they measure:
//! the ingest bench against a raw `COPY` ([`pipeline`]), event → commit
//! latency at set rates ([`latency`]), the analytics bench
//! ([`analytics`]), many dashboard clients over HTTP while ingest runs
//! ([`readers`]), the app's frame and idle benches ([`ui`]), the fault
//! suite `salespulse chaos` ([`chaos`]), forecast accuracy on generated
//! history ([`forecast`]), ingest scale-out over processes
//! ([`scale`]) and the decoder/encoder fuzzer ([`fuzz`]). They sit on top
//! of the layers they drive and nothing below imports them; figures quoted
//! in notes come from these.

pub mod analytics;
pub mod chaos;
pub mod forecast;
pub mod fuzz;
pub mod latency;
pub mod pipeline;
pub mod readers;
pub mod scale;
pub mod ui;

/// Resident set size of this process in MiB, where the platform tells it
/// (Linux: `/proc/self/status`; elsewhere `None`).
pub(crate) fn rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// User + system CPU time of this process (Unix: `getrusage`; elsewhere
/// `None`).
#[cfg(unix)]
#[allow(unsafe_code)]
pub(crate) fn process_cpu() -> Option<std::time::Duration> {
    use std::time::Duration;
    // SAFETY: getrusage only writes the struct it is given, which is a
    // plain C struct for which all-zero bytes are a valid value.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| {
        Duration::new(
            u64::try_from(t.tv_sec).unwrap_or(0),
            u32::try_from(t.tv_usec).unwrap_or(0).saturating_mul(1_000),
        )
    };
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}

/// User + system CPU time of this process (Unix: `getrusage`; elsewhere
/// `None`).
#[cfg(not(unix))]
pub(crate) fn process_cpu() -> Option<std::time::Duration> {
    None
}
