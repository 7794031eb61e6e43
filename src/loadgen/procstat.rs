//! What Linux's /proc tells about a process (CPU time, resident memory), the machine's
//! load average, and which local process listens on a TCP port. Elsewhere every reading
//! is `None`.

use std::time::Instant;

/// Kernel clock ticks per second for /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;
/// Processes looked at when searching for a port's listener.
const MAX_PROCS_SCANNED: usize = 65_536;
/// File descriptors looked at per process.
const MAX_FDS_PER_PROC: usize = 65_536;

/// CPU seconds (user + system) process `pid` has used so far.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((ticks(11)? + ticks(12)?) / TICKS_PER_SEC)
}

/// Resident set size of `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// Cores of this machine.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The process listening on TCP `port` on this machine, if it can be seen (same user or
/// root).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .flat_map(|t| listening_inodes(&t, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.take(MAX_PROCS_SCANNED) {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.take(MAX_FDS_PER_PROC).flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Inodes of the sockets listening (state 0A) on `port` in a /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let port_hex = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = f.get(1)?;
            let (_, p) = local.rsplit_once(':')?;
            (p.eq_ignore_ascii_case(&port_hex) && *f.get(3)? == "0A")
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// CPU used by a set of processes since a mark.
#[derive(Debug, Clone)]
pub struct CpuMark {
    pids: Vec<u32>,
    cpu: Vec<f64>,
    at: Instant,
}

impl CpuMark {
    pub fn new(pids: &[u32]) -> CpuMark {
        CpuMark {
            pids: pids.to_vec(),
            cpu: pids.iter().map(|p| cpu_secs(*p).unwrap_or(0.0)).collect(),
            at: Instant::now(),
        }
    }

    /// CPU seconds used by all the processes since the mark, and the wall seconds.
    pub fn since(&self) -> (f64, f64) {
        let used = self
            .pids
            .iter()
            .zip(&self.cpu)
            .map(|(p, c)| (cpu_secs(*p).unwrap_or(*c) - c).max(0.0))
            .sum();
        (used, self.at.elapsed().as_secs_f64())
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        if !std::path::Path::new("/proc/self/stat").exists() {
            return;
        }
        let me = std::process::id();
        assert!(cpu_secs(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(loadavg().is_some());
        assert_eq!(cpu_secs(u32::MAX), None);
    }

    #[test]
    fn finds_the_listener_of_a_port() {
        if !std::path::Path::new("/proc/net/tcp").exists() {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener_pid(port), Some(std::process::id()));
    }

    #[test]
    fn parses_a_tcp_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
                 0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1\n\
                 1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(listening_inodes(t, 8080), vec![12345]);
        assert!(listening_inodes(t, 8081).is_empty());
    }
}
