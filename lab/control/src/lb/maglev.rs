//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as katran weights it, with
//! health changes that move only the failed backends' slots.
//!
//! **Configuration ring.** Each configured backend (weight above 0) has a permutation of the
//! table's slots, derived from two hashes of its key: `offset = h1 % M`,
//! `skip = h2 % (M - 1) + 1`, slot `j` of the permutation is `(offset + j * skip) % M` (a
//! permutation because `M` is prime). Backends take turns claiming their next unclaimed
//! preferred slot until the table is full; a backend of weight `w` claims `w` slots per turn, so
//! shares follow the weights to within a slot.
//!
//! **Health overlay.** A backend that is down keeps its place in the configuration ring; each of
//! its slots goes to the up backend with the highest weighted rendezvous score for that slot
//! (Thaler and Ravishankar's highest random weight, score `-w / ln(u)`). Plain Maglev rebuilds
//! the ring without the failed backend, and its greedy fill then cascades: at 65537 slots, one
//! removal among 1000 backends moves about 7 times the removed share, 1 of 100 about 1.5 times.
//! With the overlay a health change moves exactly the slots of the backends that changed state:
//! going down moves its slots and nothing else (a rendezvous winner only changes when the winner
//! itself leaves), coming back returns the same slots. The ring stays a pure function of the
//! configuration and the set of up backends, so LB nodes that agree on both build identical
//! rings whatever order the health changes reached them in. Freed slots spread by weight in
//! expectation rather than to the slot: `cargo xtask bench xdp` prints both the disruption and
//! the resulting imbalance. Changing weights or the configured set rebuilds the configuration
//! ring, with Maglev's own disruption (the benchmark prints it too).
//!
//! Pure: no I/O; the same input always builds the same table.

/// A backend of the table: a stable key (e.g. its address bytes), a weight and its health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity: the permutation derives from it, so it must not change across rebuilds.
    pub key: Vec<u8>,
    /// Relative weight; 0 takes the backend out of the configuration ring.
    pub weight: u32,
    /// Whether it takes traffic; a down backend's slots go to up backends (see the module docs).
    pub up: bool,
}

/// Errors building a table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The table size is not a prime above 1.
    #[error("table size {0} is not a prime")]
    NotPrime(u32),
    /// No backend that is up and has a non-zero weight.
    #[error("no backend that is up with a non-zero weight")]
    NoBackends,
    /// Two backends share a key.
    #[error("two backends share the key {0:?}")]
    DuplicateKey(Vec<u8>),
}

/// Builds a table of `size` entries (a prime), each the index into `backends` of its owner: the
/// configuration ring of the backends with a weight, with the slots of down backends handed to
/// up ones (see the module docs).
pub fn build(backends: &[Backend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let mut keys: Vec<&[u8]> = backends.iter().map(|b| b.key.as_slice()).collect();
    keys.sort_unstable();
    if let Some(dup) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(MaglevError::DuplicateKey(dup[0].to_vec()));
    }
    let up: Vec<(u32, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.up && b.weight > 0)
        .map(|(i, b)| (i as u32, hash(&b.key, 0x6d61_676c_6576_3033), b.weight))
        .collect();
    if up.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    let mut table = fill(backends, size);
    if up.len() < backends.iter().filter(|b| b.weight > 0).count() {
        let equal = up.iter().all(|b| b.2 == up[0].2);
        for (slot, owner) in table.iter_mut().enumerate() {
            if !backends[*owner as usize].up {
                *owner = rendezvous(&up, slot as u64, equal);
            }
        }
    }
    Ok(table)
}

/// The configuration ring: Maglev's greedy fill over the backends with a weight, up or down.
fn fill(backends: &[Backend], size: u32) -> Vec<u32> {
    let m = u64::from(size);
    let members: Vec<(usize, u64, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let offset = hash(&b.key, 0x6d61_676c_6576_3031) % m;
            let skip = hash(&b.key, 0x6d61_676c_6576_3032) % (m - 1) + 1;
            (i, offset, skip, b.weight)
        })
        .collect();
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut next = vec![0u64; members.len()];
    let mut filled = 0u32;
    'fill: loop {
        for (slot, &(index, offset, skip, weight)) in members.iter().enumerate() {
            for _ in 0..weight {
                let mut c = ((offset + next[slot] * skip) % m) as usize;
                while table[c] != EMPTY {
                    next[slot] += 1;
                    c = ((offset + next[slot] * skip) % m) as usize;
                }
                table[c] = index as u32;
                next[slot] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
        }
    }
    table
}

/// The up backend (index, seed, weight) with the highest weighted rendezvous score for `slot`.
/// With equal weights the score is monotonic in the hash, so the logarithm is skipped; with
/// unequal weights it comes from the platform's `ln`, so LB nodes that must agree bit for bit
/// should run the same build (the lab's do).
fn rendezvous(up: &[(u32, u64, u32)], slot: u64, equal: bool) -> u32 {
    let draw = |seed: u64| mix(seed ^ slot.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    if equal {
        return up.iter().max_by_key(|b| draw(b.1)).expect("not empty").0;
    }
    let score = |b: &(u32, u64, u32)| {
        // u in [0, 1) from 53 bits of the draw: ln(u) < 0, so the score is finite, from 0 (u = 0)
        // upwards, and grows with the draw, as the equal-weight comparison does.
        let u = (draw(b.1) >> 11) as f64 / (1u64 << 53) as f64;
        -f64::from(b.2) / u.ln()
    };
    up.iter().map(|b| (score(b), b.0)).max_by(|a, b| a.0.total_cmp(&b.0)).expect("not empty").1
}

/// How many slots of `table` each of `n` backends owns (the balance a build leaves).
pub fn slots_per_backend(table: &[u32], n: usize) -> Vec<u32> {
    let mut counts = vec![0; n];
    for owner in table {
        counts[*owner as usize] += 1;
    }
    counts
}

/// Whether `n` is prime (trial division: table sizes are at most a few million).
pub(crate) fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u32;
    while d.saturating_mul(d) <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A stable 64-bit hash (FNV-1a, then SplitMix64's finaliser), seeded.
fn hash(key: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

/// SplitMix64's finaliser.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Fraction of entries whose owner differs between two tables of equal size, where owners are
/// compared by key (`before_keys[i]` owns index `i` of `before`).
pub fn changed_fraction(before: &[u32], before_keys: &[Vec<u8>], after: &[u32], after_keys: &[Vec<u8>]) -> f64 {
    let changed =
        before.iter().zip(after).filter(|(b, a)| before_keys[**b as usize] != after_keys[**a as usize]).count();
    changed as f64 / before.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: usize) -> Vec<Backend> {
        (0..n).map(|i| Backend { key: format!("backend-{i}").into_bytes(), weight: 1, up: true }).collect()
    }

    #[test]
    fn every_entry_is_owned_and_shares_follow_weights() {
        let mut set = backends(4);
        set[0].weight = 2;
        let counts = slots_per_backend(&build(&set, 65_537).unwrap(), 4);
        let unit = 65_537.0 / 5.0;
        assert!((counts[0] as f64 / unit - 2.0).abs() < 0.02, "{counts:?}");
        for c in &counts[1..] {
            assert!((*c as f64 / unit - 1.0).abs() < 0.02, "{counts:?}");
        }
    }

    #[test]
    fn removal_moves_little_more_than_the_removed_share() {
        let all = backends(10);
        let before = build(&all, 65_537).unwrap();
        let rest: Vec<Backend> = all.iter().filter(|b| b.key != b"backend-3").cloned().collect();
        let after = build(&rest, 65_537).unwrap();
        let keys = |set: &[Backend]| set.iter().map(|b| b.key.clone()).collect::<Vec<_>>();
        let moved = changed_fraction(&before, &keys(&all), &after, &keys(&rest));
        assert!((0.1..0.11).contains(&moved), "moved {moved}");
    }

    fn down(set: &[Backend], which: &[usize]) -> Vec<Backend> {
        let mut set = set.to_vec();
        for i in which {
            set[*i].up = false;
        }
        set
    }

    #[test]
    fn a_health_change_moves_exactly_the_changed_backends_slots() {
        let all = backends(100);
        let before = build(&all, 65_537).unwrap();
        let one_down = build(&down(&all, &[7]), 65_537).unwrap();
        for (b, a) in before.iter().zip(&one_down) {
            assert!(*b == 7 && *a != 7 || b == a, "slot of {b} moved to {a}");
        }
        // A second failure moves only the slots its backend holds now, including those it
        // inherited from the first.
        let two_down = build(&down(&all, &[7, 40]), 65_537).unwrap();
        for (b, a) in one_down.iter().zip(&two_down) {
            assert!(*b == 40 && *a != 40 || b == a, "slot of {b} moved to {a}");
        }
        assert_eq!(build(&down(&all, &[40, 7]), 65_537).unwrap(), two_down);
        // Coming back restores the configuration ring exactly.
        assert_eq!(build(&all, 65_537).unwrap(), before);
    }

    #[test]
    fn freed_slots_follow_the_weights_of_the_up_backends() {
        let mut set = backends(3);
        set[0].weight = 2;
        set[2].up = false;
        let counts = slots_per_backend(&build(&set, 65_537).unwrap(), 3);
        assert_eq!(counts[2], 0);
        let share = counts[0] as f64 / 65_537.0;
        assert!((share - 2.0 / 3.0).abs() < 0.01, "{counts:?}");
    }

    /// The slots a down backend frees go to the up backends in proportion to their weights,
    /// with three of them (with two, a wrong score can still split them right: the larger of
    /// `w * E` draws and of `w / E` draws win alike between two).
    #[test]
    fn freed_slots_split_by_weight_among_three_up_backends() {
        let mut set = backends(4);
        for (b, w) in set.iter_mut().zip([3, 2, 1, 1]) {
            b.weight = w;
        }
        let before = build(&set, 65_537).unwrap();
        set[3].up = false;
        let after = build(&set, 65_537).unwrap();
        let freed: Vec<u32> = before.iter().zip(&after).filter(|(b, _)| **b == 3).map(|(_, a)| *a).collect();
        let counts = slots_per_backend(&freed, 4);
        assert_eq!(counts[3], 0);
        for (owner, weight) in [(0, 3.0), (1, 2.0), (2, 1.0)] {
            let share = counts[owner] as f64 / freed.len() as f64;
            assert!(
                (share - weight / 6.0).abs() < 0.015,
                "backend {owner}: {share:.3} of {} freed: {counts:?}",
                freed.len()
            );
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(build(&backends(2), 65_536), Err(MaglevError::NotPrime(65_536)));
        let zero = vec![Backend { key: b"a".to_vec(), weight: 0, up: true }];
        assert_eq!(build(&zero, 7), Err(MaglevError::NoBackends));
        let all_down = vec![Backend { key: b"a".to_vec(), weight: 1, up: false }];
        assert_eq!(build(&all_down, 7), Err(MaglevError::NoBackends));
        let dup = vec![Backend { key: b"a".to_vec(), weight: 1, up: true }; 2];
        assert_eq!(build(&dup, 7), Err(MaglevError::DuplicateKey(b"a".to_vec())));
    }

    /// The primes up to `n`, by a sieve of Eratosthenes (not [`is_prime`]'s trial division).
    fn sieve(n: usize) -> Vec<bool> {
        let mut prime = vec![true; n + 1];
        prime[0] = false;
        prime[1] = false;
        for i in 2..=n {
            if prime[i] {
                for multiple in (i * i..=n).step_by(i) {
                    prime[multiple] = false;
                }
            }
        }
        prime
    }

    /// Every size up to 4,000, and squares of primes up to the largest whose square fits a
    /// `u32`: exactly the primes are accepted (a non-prime size would leave a permutation that
    /// misses slots, and the fill would never end), and every accepted size's ring is a full
    /// fill whose equal-weight shares differ by at most one slot. Primality is asked of
    /// [`is_prime`] before any table is built, so an accepted non-prime fails here instead of
    /// hanging the fill.
    #[test]
    fn exactly_the_primes_are_accepted_and_each_ring_fills_every_slot() {
        const LIMIT: usize = 4_000;
        let prime = sieve(LIMIT);
        let set = backends(3);
        for size in 0..=LIMIT as u32 {
            assert_eq!(is_prime(size), prime[size as usize], "is_prime({size})");
            match build(&set, size) {
                Ok(table) => {
                    assert_eq!(table.len(), size as usize, "size {size}");
                    let counts = slots_per_backend(&table, set.len());
                    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
                    assert!(max - min <= 1, "size {size}: shares {counts:?}");
                }
                Err(e) => assert_eq!(e, MaglevError::NotPrime(size), "size {size}"),
            }
        }
        for p in [2u32, 3, 5, 7, 251, 4_093, 65_521] {
            assert!(is_prime(p), "{p}");
            assert_eq!(build(&set, p * p), Err(MaglevError::NotPrime(p * p)), "{p} squared");
            assert_eq!(build(&set, p * (p + 2)), Err(MaglevError::NotPrime(p * (p + 2))), "{p} x {}", p + 2);
        }
        assert!(build(&set, zrlab_common::lb::MAX_RING).is_ok(), "the largest ring");
    }
}
