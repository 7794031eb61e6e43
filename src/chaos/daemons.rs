//! The daemons under test: real `sca-dispatch run` processes (the runner's own binary),
//! one configuration file each (ports, the run's queues, the simulators), started,
//! SIGKILLed and started again by instance number, their logs appended to one file
//! each. Every process started is stopped when the fleet is dropped.

use anyhow::Context;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long SIGTERM may take before SIGKILL, when the fleet stops.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Log bytes quoted in an error about a daemon.
const LOG_TAIL: u64 = 3000;

/// One instance: its ports, configuration and log, and its process while it runs.
#[derive(Debug)]
pub struct Instance {
    pub http_port: u16,
    pub metrics_port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Every process id this instance ran as, oldest first.
    pub pids: Vec<u32>,
}

impl Instance {
    pub fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The running process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// The instances of a run.
#[derive(Debug)]
pub struct Fleet {
    exe: PathBuf,
    pub instances: Vec<Instance>,
}

/// A free TCP port on the loopback interface (bound, then released).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// The last bytes of a log file, for an error message.
pub fn log_tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    use std::io::Seek as _;
    if f.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_TAIL)))
        .is_err()
        || f.read_to_end(&mut buf).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&buf).trim().to_string()
}

impl Fleet {
    /// Writes one configuration per instance into `dir`: `config(i, http, metrics)` gives
    /// instance `i`'s TOML text for its ports. Nothing is started yet.
    pub fn prepare(
        exe: &Path,
        dir: &Path,
        n: usize,
        config: impl Fn(usize, u16, u16) -> anyhow::Result<String>,
    ) -> anyhow::Result<Fleet> {
        let mut instances = Vec::with_capacity(n);
        for i in 0..n {
            let (http_port, metrics_port) = (free_port()?, free_port()?);
            let path = dir.join(format!("daemon-{i}.toml"));
            let text = config(i, http_port, metrics_port)?;
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            instances.push(Instance {
                http_port,
                metrics_port,
                config: path,
                log: dir.join(format!("daemon-{i}.log")),
                child: None,
                pids: Vec::new(),
            });
        }
        Ok(Fleet {
            exe: exe.to_path_buf(),
            instances,
        })
    }

    fn get(&mut self, i: usize) -> anyhow::Result<&mut Instance> {
        self.instances
            .get_mut(i)
            .with_context(|| format!("there is no instance {i}"))
    }

    /// Starts instance `i` (`sca-dispatch run --config …`, log appended); its pid.
    pub fn spawn(&mut self, i: usize) -> anyhow::Result<u32> {
        let exe = self.exe.clone();
        let inst = self.get(i)?;
        if inst.child.is_some() {
            anyhow::bail!("instance {i} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&inst.log)
            .with_context(|| format!("opening {}", inst.log.display()))?;
        let err = log.try_clone()?;
        let child = Command::new(&exe)
            .arg("run")
            .arg("--config")
            .arg(&inst.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} run", exe.display()))?;
        let pid = child.id();
        inst.pids.push(pid);
        inst.child = Some(child);
        Ok(pid)
    }

    /// SIGKILLs instance `i` and reaps it; the pid it had.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<u32> {
        let inst = self.get(i)?;
        let Some(mut child) = inst.child.take() else {
            anyhow::bail!("instance {i} is not running");
        };
        let pid = child.id();
        child
            .kill()
            .with_context(|| format!("SIGKILL of instance {i} (pid {pid})"))?;
        child.wait().context("reaping the killed daemon")?;
        Ok(pid)
    }

    /// The instances whose process ended on its own since the last call, each with what
    /// to say about it (status and the end of its log).
    pub fn reap_exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, inst) in self.instances.iter_mut().enumerate() {
            if let Some(c) = inst.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    inst.child = None;
                    out.push((
                        i,
                        format!(
                            "instance {i} (pid {}) exited with {status}; its log ends with:\n{}",
                            inst.pids.last().copied().unwrap_or(0),
                            log_tail(&inst.log)
                        ),
                    ));
                }
            }
        }
        out
    }

    /// An error naming the first instance whose process ended on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.reap_exited().into_iter().next() {
            Some((_, why)) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }

    /// Waits until instance `i` answers `/readyz` with 200, at most `timeout`; fails at
    /// once when its process ends.
    pub async fn wait_ready(&mut self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let api = self.get(i)?.api();
        let end = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let left = end.saturating_duration_since(Instant::now());
            let step = left.min(Duration::from_secs(1));
            let ready = crate::loadgen::cli::wait_ready(std::slice::from_ref(&api), step).await;
            if ready.is_ok() {
                return Ok(());
            }
            if Instant::now() >= end {
                let inst = self.get(i)?;
                anyhow::bail!(
                    "instance {i} ({api}) was not ready within {} s; its log ends with:\n{}",
                    timeout.as_secs(),
                    log_tail(&inst.log)
                );
            }
        }
    }

    /// SIGTERM to every running instance, SIGKILL after a grace period.
    pub fn stop_all(&mut self) {
        for inst in &mut self.instances {
            if let Some(c) = &inst.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let end = Instant::now() + STOP_GRACE;
        for inst in &mut self.instances {
            if let Some(mut c) = inst.child.take() {
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => break,
                        Ok(None) if Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        _ => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop_all();
    }
}
