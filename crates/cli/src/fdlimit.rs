//! The process's open-file limit: every MQTT connection `serve` takes, and every
//! connection `bench --hold` keeps, is a file descriptor. Only the binary raises it;
//! the libraries take the limit as they find it.

use std::io;

/// Raises this process's open-file limit to at least `want` where allowed, and returns
/// the limit now in force (which may still be lower: the caller says so).
///
/// The soft limit is raised up to the hard limit, as any process may. When that is not
/// enough and the process is privileged (root or `CAP_SYS_RESOURCE`), the hard limit is
/// raised too, up to the kernel's per-process maximum (`fs.nr_open`); unprivileged, that
/// step fails quietly and the lower limit is returned.
pub(crate) fn raise_open_file_limit(want: u64) -> io::Result<u64> {
    let got = rlimit::increase_nofile_limit(want)?;
    if got >= want {
        return Ok(got);
    }
    let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(want);
    let target = want.min(ceiling);
    if target > got && rlimit::setrlimit(rlimit::Resource::NOFILE, target, target).is_ok() {
        return Ok(target);
    }
    Ok(got)
}
