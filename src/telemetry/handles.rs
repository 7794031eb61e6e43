//! Metric handles for the hot path, registered with the recorder once per thread and
//! label set. `metrics::counter!(name, "label" => value)` builds a key (a vector of
//! labels) and looks it up in the recorder's registry on every call; here the handle is
//! looked up in a small thread-local map by the addresses of the name and of the
//! `&'static str` label values, so a challenge's counters cost a hash of one word.
//! That hash is foldhash's fixed-seed one rather than the std SipHash: the keys are
//! addresses of static strings and app names of the configuration, never input, so a
//! keyed hash buys nothing there (measured with `scripts/callgrind-live.sh`: the
//! daemon's SipHash instructions per challenge went from 6,410 to 3,487, with the
//! pending index's one-lookup removal beside it).
//!
//! Bounded: the label values are static strings from fixed sets (kinds, outcomes,
//! channels, results, providers) and the app names of the configuration. Handles are
//! cached only once the daemon's Prometheus recorder is installed
//! ([`super::prometheus`]); before that every call goes to whatever recorder there is.
//! Every call site of one metric uses the same label names.

use foldhash::fast::FixedState;
use metrics::{Counter, Gauge, Histogram, Label};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// A metric name and up to three label values, by address (and length).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Id([usize; 4]);

impl Id {
    fn new(name: &'static str, values: &[&'static str]) -> Self {
        let mut w = [name.as_ptr() as usize, 0, 0, 0];
        for (slot, value) in w[1..].iter_mut().zip(values) {
            *slot = value.as_ptr() as usize ^ (value.len() << 48);
        }
        Id(w)
    }
}

/// One word into the hasher, not four with a length prefix: the words are addresses,
/// distinct by construction, and a collision costs only a comparison.
impl Hash for Id {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let [a, b, c, d] = self.0.map(|w| w as u64);
        state.write_u64(a ^ b.rotate_left(16) ^ c.rotate_left(32) ^ d.rotate_left(48));
    }
}

/// A map of this module's, hashed by [`FixedState`].
type Map<K, V> = HashMap<K, V, FixedState>;

/// A push's provider and result (as an [`Id`]) and its app (`None`: the default app).
type PushKey = (Id, Option<Arc<str>>);

/// Cached handles: the simple ones, and a push's counter and duration histogram, whose
/// `app` label is an app name of the configuration.
#[derive(Default)]
struct Handles {
    counters: Map<Id, Counter>,
    histograms: Map<Id, Histogram>,
    gauges: Map<Id, Gauge>,
    push: Map<PushKey, (Counter, Histogram)>,
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

fn labels(names: &[&'static str], values: &[&'static str]) -> Vec<Label> {
    names
        .iter()
        .zip(values)
        .map(|(n, v)| Label::new(*n, *v))
        .collect()
}

/// Runs `use_` on the handle under `key` in the map `pick` chooses, made by `make` on
/// first use (or every time, before the recorder is installed). The handle is used in
/// place, not cloned: no reference count goes up and down per use.
fn with_cached<H, K: std::hash::Hash + Eq>(
    pick: impl FnOnce(&mut Handles) -> &mut Map<K, H>,
    key: K,
    make: impl FnOnce() -> H,
    use_: impl FnOnce(&H),
) {
    if !super::recorder_installed() {
        return use_(&make());
    }
    HANDLES.with(|h| use_(pick(&mut h.borrow_mut()).entry(key).or_insert_with(make)))
}

/// Adds `n` to the counter `name{names[i]=values[i]}` (at most three labels).
pub fn count(name: &'static str, names: &[&'static str], values: &[&'static str], n: u64) {
    with_cached(
        |h| &mut h.counters,
        Id::new(name, values),
        || metrics::counter!(name, labels(names, values)),
        |c| c.increment(n),
    )
}

/// Records `v` in the histogram `name{names[i]=values[i]}` (at most three labels).
pub fn record(name: &'static str, names: &[&'static str], values: &[&'static str], v: f64) {
    with_cached(
        |h| &mut h.histograms,
        Id::new(name, values),
        || metrics::histogram!(name, labels(names, values)),
        |hist| hist.record(v),
    )
}

/// Adds `delta` (negative to lower it) to the gauge `name{names[i]=values[i]}` (at most
/// three labels).
pub fn gauge_add(name: &'static str, names: &[&'static str], values: &[&'static str], delta: f64) {
    with_cached(
        |h| &mut h.gauges,
        Id::new(name, values),
        || metrics::gauge!(name, labels(names, values)),
        |g| g.increment(delta),
    )
}

/// One push request: `sca_push_requests_total{provider, app, result}` counted and its
/// duration recorded in `sca_push_request_duration_seconds{provider}`, both found by one
/// lookup. `app` is `None` for the default app.
pub fn push(provider: &'static str, app: Option<&Arc<str>>, result: &'static str, took_s: f64) {
    let key = (
        Id::new(super::PUSH_REQUESTS, &[provider, result]),
        app.cloned(),
    );
    with_cached(
        |h| &mut h.push,
        key,
        || {
            let app: metrics::SharedString = match app {
                Some(name) => name.clone().into(),
                None => crate::challenge::model::AppName::DEFAULT.into(),
            };
            (
                metrics::counter!(super::PUSH_REQUESTS, "provider" => provider, "app" => app, "result" => result),
                metrics::histogram!(super::PUSH_DURATION, "provider" => provider),
            )
        },
        |(counter, duration)| {
            counter.increment(1);
            duration.record(took_s);
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_handle_counts_into_the_same_series() {
        let prom = super::super::prometheus();
        for _ in 0..3 {
            count(
                "sca_handles_test_total",
                &["kind", "outcome"],
                &["login", "approved"],
                1,
            );
        }
        count(
            "sca_handles_test_total",
            &["kind", "outcome"],
            &["login", "denied"],
            1,
        );
        let text = prom.render();
        assert!(
            text.contains(r#"sca_handles_test_total{kind="login",outcome="approved"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"sca_handles_test_total{kind="login",outcome="denied"} 1"#));
    }

    #[test]
    fn push_counters_keep_apps_apart() {
        let prom = super::super::prometheus();
        let app: Arc<str> = "wallet".into();
        push("handles-test", Some(&app), "delivered", 0.5);
        push("handles-test", Some(&app), "delivered", 0.5);
        push("handles-test", None, "delivered", 0.25);
        let text = prom.render();
        assert!(
            text.contains(r#"sca_push_requests_total{provider="handles-test",app="wallet",result="delivered"} 2"#),
            "{text}"
        );
        assert!(text.contains(
            r#"sca_push_requests_total{provider="handles-test",app="default",result="delivered"} 1"#
        ));
        assert!(
            text.contains(r#"sca_push_request_duration_seconds_count{provider="handles-test"} 3"#),
            "{text}"
        );
    }
}
