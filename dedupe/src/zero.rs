//! Zero detection: all-zero ranges become holes and cost neither hashing nor storage.

/// True when every byte of `buf` is zero. Folds 64-byte blocks with OR so the compiler vectorises it.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut blocks = buf.chunks_exact(64);
    for block in &mut blocks {
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            return false;
        }
    }
    blocks.remainder().iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_single_set_byte_anywhere() {
        for len in [0usize, 1, 63, 64, 65, 4096, 4099] {
            let mut buf = vec![0u8; len];
            assert!(is_zero(&buf));
            for pos in 0..len {
                buf[pos] = 1;
                assert!(!is_zero(&buf), "len {len} pos {pos}");
                buf[pos] = 0;
            }
        }
    }
}
