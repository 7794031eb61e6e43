//! Which live instance should own which partition: a balanced rendezvous hash. Every
//! instance ranks the instances for each partition by a hash of (instance, partition)
//! and partitions are given, in order, to their best-ranked instance that has room left
//! (⌊partitions / instances⌋ each, one more for as many as the remainder). Every instance that sees the same live set computes the same
//! map; each instance gets ⌊N/n⌋ or ⌈N/n⌉ partitions; a joining or leaving instance moves
//! few partitions besides its own share.

use sha2::{Digest, Sha256};

fn rank(instance: &str, partition: usize) -> u64 {
    let d = Sha256::new()
        .chain_update(instance.as_bytes())
        .chain_update(b"|")
        .chain_update(partition.to_le_bytes())
        .finalize();
    u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8]))
}

/// The owner (an index into `instances`) of each of `partitions`; empty `instances`
/// gives an empty map.
pub fn assign(instances: &[String], partitions: usize) -> Vec<usize> {
    let n = instances.len();
    if n == 0 {
        return Vec::new();
    }
    // ⌊N/n⌋ each, and ⌈N/n⌉ for the first N mod n instances to reach it.
    let (floor, extra) = (partitions / n, partitions % n);
    let mut big = 0;
    let mut load = vec![0usize; n];
    let mut out = Vec::with_capacity(partitions);
    for p in 0..partitions {
        let mut order: Vec<usize> = (0..n).collect();
        // Ties broken by the id so that every instance agrees.
        order.sort_by(|&a, &b| {
            rank(&instances[b], p)
                .cmp(&rank(&instances[a], p))
                .then_with(|| instances[a].cmp(&instances[b]))
        });
        let pick = order
            .into_iter()
            .find(|&i| load[i] < floor || (load[i] == floor && big < extra))
            .unwrap_or(0);
        if load[pick] == floor {
            big += 1;
        }
        load[pick] += 1;
        out.push(pick);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("inst-{i:04x}")).collect()
    }

    #[test]
    fn every_instance_gets_its_share() {
        for n in 1..=7 {
            for parts in [1, 2, 16, 64] {
                let m = assign(&ids(n), parts);
                assert_eq!(m.len(), parts);
                let mut load = vec![0; n];
                m.iter().for_each(|&i| load[i] += 1);
                let (lo, hi) = (parts / n, parts.div_ceil(n));
                assert!(
                    load.iter().all(|&l| l >= lo && l <= hi),
                    "{n} instances, {parts} partitions: {load:?}"
                );
            }
        }
    }

    #[test]
    fn the_map_does_not_depend_on_the_order_instances_are_listed() {
        let mut a = ids(3);
        let m1: Vec<String> = assign(&a, 16).iter().map(|&i| a[i].clone()).collect();
        a.reverse();
        let m2: Vec<String> = assign(&a, 16).iter().map(|&i| a[i].clone()).collect();
        assert_eq!(m1, m2);
    }

    #[test]
    fn a_joining_instance_moves_few_partitions_besides_its_own() {
        let two = ids(2);
        let three = ids(3);
        let before: Vec<&String> = assign(&two, 16).iter().map(|&i| &two[i]).collect();
        let after: Vec<&String> = assign(&three, 16).iter().map(|&i| &three[i]).collect();
        let moved_between_old = before
            .iter()
            .zip(&after)
            .filter(|(b, a)| b != a && **a != &three[2])
            .count();
        assert!(
            moved_between_old <= 3,
            "{moved_between_old} moved between the old two"
        );
    }
}
