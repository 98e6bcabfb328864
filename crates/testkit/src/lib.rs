//! Helpers the test suites of every crate share (a dev-dependency only).

/// `len` deterministic pseudo-random bytes (xorshift64), different for each `seed`: data that
/// does not compress or dedupe by accident, and is the same on every run.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
