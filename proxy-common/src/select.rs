//! Pure backend selection, shared by the connect hooks and the daemon's tests.
//!
//! The kernel keeps a per-CPU round-robin cursor per service; the daemon keeps
//! the eligible backends of a service in slots `0..backend_count`. Selection is
//! therefore a modulo, and a slot that vanished under a concurrent update falls
//! back to slot 0 (the daemon always shrinks the count before removing slots).

/// Slot to use for the `cursor`-th connection of a service with `count`
/// eligible backends; `None` when the service has none.
#[inline(always)]
pub fn pick_slot(cursor: u32, count: u32) -> Option<u32> {
    if count == 0 {
        None
    } else {
        Some(cursor % count)
    }
}

#[cfg(test)]
mod tests {
    use super::pick_slot;

    #[test]
    fn round_robin_is_even() {
        let mut hits = [0u32; 3];
        for cursor in 0..300 {
            let slot = pick_slot(cursor, 3).expect("3 backends");
            hits[slot as usize] += 1;
        }
        assert_eq!(hits, [100, 100, 100]);
    }

    #[test]
    fn no_backends_no_slot() {
        assert_eq!(pick_slot(7, 0), None);
    }

    #[test]
    fn cursor_wraps() {
        assert_eq!(pick_slot(u32::MAX, 2), Some(1));
    }
}
