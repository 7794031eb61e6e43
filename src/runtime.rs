//! The daemon's tokio runtimes (`[runtime]`): one multi-threaded runtime (the default),
//! or thread-per-core — one current-thread runtime per core, the challenge consumers
//! spread over them so that a challenge's parsing, state machine and the tasks it spawns
//! stay on the thread its delivery arrived on.
//!
//! In thread-per-core mode the main thread's runtime runs everything else (HTTP API,
//! timers, control traffic, the broker connection's own I/O) and takes consumer 0; the
//! other runtimes each run on a thread of their own until the main one ends.

use tokio::runtime::{Builder, Handle, Runtime};

/// How the runtimes are laid out (`runtime.flavor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Flavor {
    /// One multi-threaded, work-stealing runtime (`"multi-thread"`).
    #[default]
    MultiThread,
    /// One current-thread runtime per core (`"thread-per-core"`).
    ThreadPerCore,
}

impl Flavor {
    /// The flavor named `s` in the configuration.
    pub fn parse(s: &str) -> Option<Flavor> {
        match s {
            "multi-thread" => Some(Flavor::MultiThread),
            "thread-per-core" => Some(Flavor::ThreadPerCore),
            _ => None,
        }
    }
}

/// Where the challenge consumers run: in thread-per-core mode the handles of the extra
/// runtimes (consumer 0 stays on the main one); empty: all on the caller's runtime.
#[derive(Debug, Clone, Default)]
pub struct Spread(Vec<Handle>);

impl Spread {
    /// The runtime consumer `i` should run on: `None` for the runtime the caller is on.
    pub fn runtime_for(&self, i: usize) -> Option<&Handle> {
        match i % (self.0.len() + 1) {
            0 => None,
            k => self.0.get(k - 1),
        }
    }
}

/// The runtimes of a process; the extra threads stop when this is dropped.
pub struct Runtimes {
    /// The runtime the caller blocks on.
    pub main: Runtime,
    extra: Vec<(
        std::thread::JoinHandle<()>,
        tokio::sync::oneshot::Sender<()>,
    )>,
    spread: Spread,
}

impl Runtimes {
    /// `workers` threads (0: one per core) in the given flavor.
    pub fn build(flavor: Flavor, workers: usize) -> std::io::Result<Runtimes> {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        match flavor {
            Flavor::MultiThread => Ok(Runtimes {
                main: Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()?,
                extra: Vec::new(),
                spread: Spread::default(),
            }),
            Flavor::ThreadPerCore => {
                let main = Builder::new_current_thread().enable_all().build()?;
                let mut extra = Vec::new();
                let mut handles = Vec::new();
                for i in 1..workers {
                    let rt = Builder::new_current_thread().enable_all().build()?;
                    handles.push(rt.handle().clone());
                    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
                    let thread = std::thread::Builder::new()
                        .name(format!("sca-core-{i}"))
                        .spawn(move || {
                            // Runs the consumers spawned onto it until the main runtime
                            // is done (the sender dropped).
                            let _ = rt.block_on(stop_rx);
                        })?;
                    extra.push((thread, stop_tx));
                }
                Ok(Runtimes {
                    main,
                    extra,
                    spread: Spread(handles),
                })
            }
        }
    }
}

impl Runtimes {
    /// Where the challenge consumers go (`Settings::consumer_spread`).
    pub fn spread(&self) -> Spread {
        self.spread.clone()
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        for (thread, stop) in self.extra.drain(..) {
            drop(stop);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_parse_by_their_configuration_names() {
        assert_eq!(Flavor::parse("multi-thread"), Some(Flavor::MultiThread));
        assert_eq!(
            Flavor::parse("thread-per-core"),
            Some(Flavor::ThreadPerCore)
        );
        assert_eq!(Flavor::parse("current"), None);
    }

    #[test]
    fn thread_per_core_spreads_consumers_over_its_threads() {
        let rts = Runtimes::build(Flavor::ThreadPerCore, 3).unwrap();
        let spread = rts.spread();
        assert!(spread.runtime_for(0).is_none());
        assert!(spread.runtime_for(3).is_none());
        let threads: Vec<String> = (1..=2)
            .map(|i| {
                let h = spread.runtime_for(i).expect("an extra runtime").clone();
                rts.main.block_on(async move {
                    h.spawn(async { std::thread::current().name().unwrap_or("").to_string() })
                        .await
                        .unwrap()
                })
            })
            .collect();
        assert_eq!(threads, ["sca-core-1", "sca-core-2"]);
        drop(rts);
        let multi = Runtimes::build(Flavor::MultiThread, 2).unwrap();
        assert!(multi.spread().runtime_for(1).is_none());
    }
}
