//! Indexes of the undecided challenges by device and by user, so that
//! `GET /v1/devices/{device_id}/challenges` and `limits.one_pending_per_user` read a
//! short list instead of scanning the table. An id is added when its challenge starts
//! undecided and removed when its outcome is published, both under the challenge's own
//! entry lock; readers copy the ids out and release the index before touching the table
//! (lock order: table entry, then index, never the reverse).
//!
//! The user index is kept only where `limits.one_pending_per_user` reads it: without
//! that limit nothing asks for a user's pending challenges, and each challenge would pay
//! an insert and a removal (a key copied, a list allocated, two hashes) for nothing.
//!
//! Bounded: each key keeps at most [`MAX_PER_KEY`] ids (the newest; an older one left
//! out is still pending, only no longer listed), and keys exist only for pending
//! challenges, so the index holds at most `pending × (devices + 1)` ids.

use dashmap::DashMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::Arc;

/// Ids kept per device and per user.
pub const MAX_PER_KEY: usize = 16;

/// Keyed by device id (the spec's own `Arc`, shared, not copied) and, where kept, by
/// user id.
pub struct PendingIndex {
    by_device: DashMap<Arc<str>, Vec<Arc<str>>>,
    by_user: Option<DashMap<Box<str>, Vec<Arc<str>>>>,
}

fn add<K: Eq + Hash + Borrow<str>>(map: &DashMap<K, Vec<Arc<str>>>, key: K, id: &Arc<str>) {
    // Most keys only ever list one challenge: room for exactly one at first (a `Vec`
    // would reserve four on its first push).
    let mut ids = map.entry(key).or_insert_with(|| Vec::with_capacity(1));
    if ids.iter().any(|i| i == id) {
        return;
    }
    if ids.len() >= MAX_PER_KEY {
        ids.remove(0);
    }
    ids.push(id.clone());
}

fn remove<K: Eq + Hash + Borrow<str>>(map: &DashMap<K, Vec<Arc<str>>>, key: &str, id: &str) {
    // One lookup: the id goes, and the key with it once its list is empty.
    map.remove_if_mut(key, |_, ids| {
        ids.retain(|i| &**i != id);
        ids.is_empty()
    });
}

fn read<K: Eq + Hash + Borrow<str>>(map: &DashMap<K, Vec<Arc<str>>>, key: &str) -> Vec<Arc<str>> {
    map.get(key).map(|ids| ids.clone()).unwrap_or_default()
}

impl PendingIndex {
    /// An empty index; `by_user` keeps the user index as well.
    pub fn new(by_user: bool) -> PendingIndex {
        PendingIndex {
            by_device: DashMap::new(),
            by_user: by_user.then(DashMap::new),
        }
    }

    pub fn add<'a>(&self, id: &Arc<str>, user: &str, devices: impl Iterator<Item = &'a Arc<str>>) {
        if let Some(by_user) = &self.by_user {
            add(by_user, user.into(), id);
        }
        for d in devices {
            add(&self.by_device, d.clone(), id);
        }
    }

    pub fn remove<'a>(&self, id: &str, user: &str, devices: impl Iterator<Item = &'a str>) {
        if let Some(by_user) = &self.by_user {
            remove(by_user, user, id);
        }
        for d in devices {
            remove(&self.by_device, d, id);
        }
    }

    /// The pending challenges bound to a device, oldest first.
    pub fn for_device(&self, device_id: &str) -> Vec<Arc<str>> {
        read(&self.by_device, device_id)
    }

    /// The pending challenges of a user, oldest first (none where the user index is not
    /// kept).
    pub fn for_user(&self, user: &str) -> Vec<Arc<str>> {
        self.by_user
            .as_ref()
            .map(|m| read(m, user))
            .unwrap_or_default()
    }

    /// Keys held (devices, users).
    pub fn keys(&self) -> (usize, usize) {
        let users = self.by_user.as_ref().map_or(0, DashMap::len);
        (self.by_device.len(), users)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_and_go_and_keys_are_bounded() {
        let ix = PendingIndex::new(true);
        let a: Arc<str> = "a".into();
        let (d1, d2): (Arc<str>, Arc<str>) = ("d1".into(), "d2".into());
        ix.add(&a, "u", [&d1, &d2].into_iter());
        ix.add(&a, "u", [&d1, &d2].into_iter());
        assert_eq!(ix.for_device("d1"), vec![a.clone()]);
        assert_eq!(ix.for_user("u"), vec![a.clone()]);
        ix.remove("a", "u", ["d1", "d2"].into_iter());
        assert!(ix.for_device("d2").is_empty());
        assert_eq!(ix.keys(), (0, 0), "empty keys are dropped");
        for i in 0..MAX_PER_KEY + 3 {
            let id: Arc<str> = format!("c{i}").into();
            ix.add(&id, "u", [&d1].into_iter());
        }
        let ids = ix.for_device("d1");
        assert_eq!(ids.len(), MAX_PER_KEY);
        assert_eq!(&*ids[0], "c3", "the oldest fall out first");
    }

    #[test]
    fn without_the_user_index_users_are_not_tracked() {
        let ix = PendingIndex::new(false);
        let a: Arc<str> = "a".into();
        let d1: Arc<str> = "d1".into();
        ix.add(&a, "u", [&d1].into_iter());
        assert!(ix.for_user("u").is_empty());
        assert_eq!(ix.for_device("d1"), vec![a.clone()]);
        assert_eq!(ix.keys(), (1, 0));
        ix.remove("a", "u", ["d1"].into_iter());
        assert_eq!(ix.keys(), (0, 0));
    }
}
