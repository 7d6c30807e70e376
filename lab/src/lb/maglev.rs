//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as katran weights it.
//!
//! Each backend has a permutation of the table's slots, derived from two hashes of its key:
//! `offset = h1 % M`, `skip = h2 % (M - 1) + 1`, slot `j` of the permutation is
//! `(offset + j * skip) % M` (a permutation because `M` is prime). Backends take turns claiming
//! their next unclaimed preferred slot until the table is full; a backend of weight `w` claims
//! `w` slots per turn, so shares follow the weights. Removing a backend gives its slots to the
//! others while most other slots keep their owner: the disruption is close to the ideal `k/N`
//! (`cargo xtask bench xdp` measures it).
//!
//! Pure: no I/O; the same input always builds the same table.

/// A backend of the table: a stable key (e.g. its address bytes) and a weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Stable identity: the permutation derives from it, so it must not change across rebuilds.
    pub key: Vec<u8>,
    /// Relative weight; 0 takes the backend out of the table.
    pub weight: u32,
}

/// Errors building a table.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// The table size is not a prime above 1.
    #[error("table size {0} is not a prime")]
    NotPrime(u32),
    /// No backend with a non-zero weight.
    #[error("no backend with a non-zero weight")]
    NoBackends,
    /// Two backends share a key.
    #[error("two backends share the key {0:?}")]
    DuplicateKey(Vec<u8>),
}

/// Builds a table of `size` entries (a prime), each the index into `backends` of its owner.
pub fn build(backends: &[Backend], size: u32) -> Result<Vec<u32>, MaglevError> {
    if !is_prime(size) {
        return Err(MaglevError::NotPrime(size));
    }
    let mut keys: Vec<&[u8]> = backends.iter().map(|b| b.key.as_slice()).collect();
    keys.sort_unstable();
    if let Some(dup) = keys.windows(2).find(|w| w[0] == w[1]) {
        return Err(MaglevError::DuplicateKey(dup[0].to_vec()));
    }
    let live: Vec<(usize, u64, u64, u32)> = backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.weight > 0)
        .map(|(i, b)| {
            let m = u64::from(size);
            let offset = hash(&b.key, 0x6d61_676c_6576_3031) % m;
            let skip = hash(&b.key, 0x6d61_676c_6576_3032) % (m - 1) + 1;
            (i, offset, skip, b.weight)
        })
        .collect();
    if live.is_empty() {
        return Err(MaglevError::NoBackends);
    }
    const EMPTY: u32 = u32::MAX;
    let mut table = vec![EMPTY; size as usize];
    let mut next = vec![0u64; live.len()];
    let mut filled = 0u32;
    'fill: loop {
        for (slot, &(index, offset, skip, weight)) in live.iter().enumerate() {
            for _ in 0..weight {
                let mut c = ((offset + next[slot] * skip) % u64::from(size)) as usize;
                while table[c] != EMPTY {
                    next[slot] += 1;
                    c = ((offset + next[slot] * skip) % u64::from(size)) as usize;
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
    Ok(table)
}

/// Whether `n` is prime (trial division: table sizes are at most a few million).
pub fn is_prime(n: u32) -> bool {
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
        (0..n).map(|i| Backend { key: format!("backend-{i}").into_bytes(), weight: 1 }).collect()
    }

    #[test]
    fn every_entry_is_owned_and_shares_follow_weights() {
        let mut set = backends(4);
        set[0].weight = 2;
        let table = build(&set, 65_537).unwrap();
        let mut counts = [0usize; 4];
        for owner in &table {
            counts[*owner as usize] += 1;
        }
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

    #[test]
    fn rejects_bad_input() {
        assert_eq!(build(&backends(2), 65_536), Err(MaglevError::NotPrime(65_536)));
        let zero = vec![Backend { key: b"a".to_vec(), weight: 0 }];
        assert_eq!(build(&zero, 7), Err(MaglevError::NoBackends));
        let dup = vec![Backend { key: b"a".to_vec(), weight: 1 }; 2];
        assert_eq!(build(&dup, 7), Err(MaglevError::DuplicateKey(b"a".to_vec())));
    }
}
