//! Log2 histogram buckets shared by every probe that keeps histograms in the kernel.

/// Bucket index of `v`: bucket `b` holds `(2^(b-1), 2^b]` (bucket 0 holds `[0, 1]`), clamped to
/// `buckets - 1`, the open-ended last bucket. The bounds are upper-inclusive, as Prometheus `le`
/// and OTLP explicit-bucket bounds are.
///
/// A six-step binary search: BPF has no count-leading-zeros instruction, and LLVM's generic
/// expansion of `leading_zeros` costs about 45 instructions on hot paths.
#[inline(always)]
pub fn log2_bucket(v: u64, buckets: usize) -> usize {
    let mut x = v.saturating_sub(1);
    let mut b = 0usize;
    if x >= 1 << 32 {
        x >>= 32;
        b += 32;
    }
    if x >= 1 << 16 {
        x >>= 16;
        b += 16;
    }
    if x >= 1 << 8 {
        x >>= 8;
        b += 8;
    }
    if x >= 1 << 4 {
        x >>= 4;
        b += 4;
    }
    if x >= 1 << 2 {
        x >>= 2;
        b += 2;
    }
    if x >= 1 << 1 {
        x >>= 1;
        b += 1;
    }
    // x is now 1 (v > 1) or 0 (v <= 1): b + x = bit length of v - 1.
    let b = b + x as usize;
    if b >= buckets {
        buckets - 1
    } else {
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamps_to_the_last_bucket() {
        assert_eq!(log2_bucket(0, 36), 0);
        assert_eq!(log2_bucket(1 << 34, 36), 34);
        assert_eq!(log2_bucket((1 << 34) + 1, 36), 35);
        assert_eq!(log2_bucket(u64::MAX, 36), 35);
    }
}
