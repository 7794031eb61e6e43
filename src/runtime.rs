//! The daemon's tokio runtimes (`[runtime]`): one multi-threaded runtime (the default),
//! or thread-per-core — one current-thread runtime per core, the challenge consumers
//! spread over them so that a challenge's parsing, state machine and the tasks it spawns
//! stay on the thread its delivery arrived on.
//!
//! In thread-per-core mode the main thread's runtime runs everything else (HTTP API,
//! timers, control traffic, the broker connection's own I/O) and takes consumer 0; the
//! other runtimes each run on a thread of their own until the main one ends.
//!
//! Every runtime thread may run an upkeep hook when it parks (goes idle), and each
//! runtime then also runs it from a task every [`UPKEEP_EVERY`], so that a process left
//! idle still runs it: the binary passes its allocator's upkeep (`heap` in `main.rs`).

use std::time::Duration;
use tokio::runtime::{Builder, Handle, Runtime};

/// How often each runtime runs the upkeep hook from a task of its own.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

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
    /// `workers` threads (0: one per core) in the given flavor; `on_park` runs on a
    /// runtime thread each time it goes idle, so it must be cheap, and every
    /// [`UPKEEP_EVERY`] on each runtime.
    pub fn build(
        flavor: Flavor,
        workers: usize,
        on_park: Option<fn()>,
    ) -> std::io::Result<Runtimes> {
        let workers = match workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        match flavor {
            Flavor::MultiThread => {
                let main = with_hook(Builder::new_multi_thread().worker_threads(workers), on_park)
                    .enable_all()
                    .build()?;
                upkeep(&main, on_park);
                Ok(Runtimes {
                    main,
                    extra: Vec::new(),
                    spread: Spread::default(),
                })
            }
            Flavor::ThreadPerCore => {
                let main = with_hook(&mut Builder::new_current_thread(), on_park)
                    .enable_all()
                    .build()?;
                upkeep(&main, on_park);
                let mut extra = Vec::new();
                let mut handles = Vec::new();
                for i in 1..workers {
                    let rt = with_hook(&mut Builder::new_current_thread(), on_park)
                        .enable_all()
                        .build()?;
                    upkeep(&rt, on_park);
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

fn with_hook(b: &mut Builder, on_park: Option<fn()>) -> &mut Builder {
    match on_park {
        Some(f) => b.on_thread_park(f),
        None => b,
    }
}

/// Runs `hook` on `rt` every [`UPKEEP_EVERY`] until the runtime is dropped.
fn upkeep(rt: &Runtime, hook: Option<fn()>) {
    if let Some(f) = hook {
        rt.spawn(async move {
            let first = tokio::time::Instant::now() + UPKEEP_EVERY;
            let mut every = tokio::time::interval_at(first, UPKEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                f();
            }
        });
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
        let rts = Runtimes::build(Flavor::ThreadPerCore, 3, None).unwrap();
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
        let multi = Runtimes::build(Flavor::MultiThread, 2, None).unwrap();
        assert!(multi.spread().runtime_for(1).is_none());
    }

    static PARKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn count_park() {
        PARKED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    #[test]
    fn the_upkeep_hook_runs_when_threads_go_idle() {
        for flavor in [Flavor::MultiThread, Flavor::ThreadPerCore] {
            let before = PARKED.load(std::sync::atomic::Ordering::SeqCst);
            let rts = Runtimes::build(flavor, 2, Some(count_park)).unwrap();
            rts.main.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            });
            drop(rts);
            let after = PARKED.load(std::sync::atomic::Ordering::SeqCst);
            assert!(after > before, "{flavor:?}: the hook never ran");
        }
    }
}
