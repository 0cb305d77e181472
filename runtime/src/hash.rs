//! A small, stable hash for decisions that must be the same on every replay
//! and every machine: A/B buckets and retry jitter. `std`'s hasher is not
//! guaranteed stable across Rust releases, so we use FNV-1a with a
//! splitmix64 finaliser (good avalanche for short keys).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hashes the parts, separated so that `("ab", "c")` and `("a", "bc")` differ.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h = FNV_OFFSET;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(FNV_PRIME);
        }
        h ^= 0xff;
        h = h.wrapping_mul(FNV_PRIME);
    }
    splitmix64(h)
}

/// An entrant's holdout bucket in `0..10_000`: a stable hash of the
/// workflow's key and the subject (or, without one, the execution's id),
/// so the same person is always in or out of a workflow's holdout.
pub fn holdout_bucket(workflow_key: &str, who: &str) -> u64 {
    stable_hash(&[b"holdout", workflow_key.as_bytes(), who.as_bytes()]) % 10_000
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PINNED: u64 = 11_035_015_595_932_139_054;

    #[test]
    fn is_stable_across_runs() {
        // A fixed value: if this changes, every A/B assignment of every
        // running execution would move. Never change it.
        assert_eq!(
            stable_hash(&[b"exe_1", b"split"]),
            stable_hash(&[b"exe_1", b"split"])
        );
        assert_eq!(stable_hash(&[b"exe_1", b"split"]), PINNED);
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    #[test]
    fn spreads_short_keys_evenly() {
        let mut buckets = [0u32; 10];
        for i in 0..10_000 {
            let id = format!("exe_{i}");
            buckets[(stable_hash(&[id.as_bytes(), b"n"]) % 10) as usize] += 1;
        }
        for b in buckets {
            assert!((800..1200).contains(&b), "uneven buckets: {buckets:?}");
        }
    }
}
