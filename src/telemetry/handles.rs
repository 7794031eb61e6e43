//! Metric handles for the hot path, registered with the recorder once per thread and
//! label set. `metrics::counter!(name, "label" => value)` builds a key (a vector of
//! labels) and looks it up in the recorder's registry on every call; here the handle is
//! looked up in a small thread-local map by the addresses of the name and of the
//! `&'static str` label values, so a challenge's counters cost a hash of a few words.
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
use std::sync::Arc;

/// A metric name and up to three label values, by address.
type Id = (usize, [usize; 3]);

fn id(name: &'static str, values: &[&'static str]) -> Id {
    let mut v = [0usize; 3];
    for (slot, value) in v.iter_mut().zip(values) {
        *slot = value.as_ptr() as usize ^ (value.len() << 48);
    }
    (name.as_ptr() as usize, v)
}

/// A map of this module's, hashed by [`FixedState`].
type Map<K, V> = HashMap<K, V, FixedState>;

/// Cached handles: the simple ones, and the push counter whose `app` label is an
/// app name of the configuration.
#[derive(Default)]
struct Handles {
    counters: Map<Id, Counter>,
    histograms: Map<Id, Histogram>,
    gauges: Map<Id, Gauge>,
    push: Map<(Id, Option<Arc<str>>), Counter>,
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

/// The handle under `key` in the map `pick` chooses, made by `make` on first use (or
/// every time, before the recorder is installed).
fn cached<H: Clone, K: std::hash::Hash + Eq>(
    pick: impl FnOnce(&mut Handles) -> &mut Map<K, H>,
    key: K,
    make: impl FnOnce() -> H,
) -> H {
    if !super::recorder_installed() {
        return make();
    }
    HANDLES.with(|h| {
        pick(&mut h.borrow_mut())
            .entry(key)
            .or_insert_with(make)
            .clone()
    })
}

/// The counter `name{names[i]=values[i]}` (at most three labels).
pub fn counter(name: &'static str, names: &[&'static str], values: &[&'static str]) -> Counter {
    cached(
        |h| &mut h.counters,
        id(name, values),
        || metrics::counter!(name, labels(names, values)),
    )
}

/// The histogram `name{names[i]=values[i]}` (at most three labels).
pub fn histogram(name: &'static str, names: &[&'static str], values: &[&'static str]) -> Histogram {
    cached(
        |h| &mut h.histograms,
        id(name, values),
        || metrics::histogram!(name, labels(names, values)),
    )
}

/// The gauge `name{names[i]=values[i]}` (at most three labels).
pub fn gauge(name: &'static str, names: &[&'static str], values: &[&'static str]) -> Gauge {
    cached(
        |h| &mut h.gauges,
        id(name, values),
        || metrics::gauge!(name, labels(names, values)),
    )
}

/// `sca_push_requests_total{provider, app, result}`; `app` is `None` for the default
/// app.
pub fn push_counter(
    provider: &'static str,
    app: Option<&Arc<str>>,
    result: &'static str,
) -> Counter {
    let key = (id(super::PUSH_REQUESTS, &[provider, result]), app.cloned());
    cached(
        |h| &mut h.push,
        key,
        || {
            let app: metrics::SharedString = match app {
                Some(name) => name.clone().into(),
                None => crate::challenge::model::AppName::DEFAULT.into(),
            };
            metrics::counter!(super::PUSH_REQUESTS, "provider" => provider, "app" => app, "result" => result)
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
            counter(
                "sca_handles_test_total",
                &["kind", "outcome"],
                &["login", "approved"],
            )
            .increment(1);
        }
        counter(
            "sca_handles_test_total",
            &["kind", "outcome"],
            &["login", "denied"],
        )
        .increment(1);
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
        push_counter("handles-test", Some(&app), "delivered").increment(2);
        push_counter("handles-test", None, "delivered").increment(1);
        let text = prom.render();
        assert!(
            text.contains(r#"sca_push_requests_total{provider="handles-test",app="wallet",result="delivered"} 2"#),
            "{text}"
        );
        assert!(text.contains(
            r#"sca_push_requests_total{provider="handles-test",app="default",result="delivered"} 1"#
        ));
    }
}
