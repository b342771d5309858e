//! Pages in flight, fewer when DynamoDB cannot keep up.
//!
//! A page's batch writes must finish within half its lease (see [`super::page`]). When
//! DynamoDB is slower than that (throttling, an overloaded table), every page in flight
//! shares the slowness, so retrying them all at the same concurrency would time out again and
//! the job would make no progress. Each timed-out page gives up its slot instead (never the
//! last one), so the pages left get DynamoDB's throughput to themselves; once as many pages
//! in a row as are in flight have succeeded, one slot comes back, up to the configured number
//! (additive increase, multiplicative decrease: a run of timeouts halves it quickly).

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Semaphore, SemaphorePermit};

pub struct PageSlots {
    slots: Semaphore,
    limit: AtomicUsize,
    max: usize,
    /// Pages succeeded since the limit last changed.
    succeeded: AtomicUsize,
}

impl PageSlots {
    pub fn new(pages_in_flight: usize) -> Self {
        let n = pages_in_flight.max(1);
        PageSlots {
            slots: Semaphore::new(n),
            limit: AtomicUsize::new(n),
            max: n,
            succeeded: AtomicUsize::new(0),
        }
    }

    /// Waits for a slot; the page runs while the permit is held.
    pub async fn acquire(&self) -> SemaphorePermit<'_> {
        self.slots
            .acquire()
            .await
            .expect("the semaphore is never closed")
    }

    /// A page timed out: its slot is gone for the rest of the run unless it is the last one.
    /// Returns the pages in flight from now on.
    pub fn shrink(&self, permit: SemaphorePermit<'_>) -> usize {
        match self
            .limit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                (l > 1).then(|| l - 1)
            }) {
            Ok(previous) => {
                permit.forget();
                self.succeeded.store(0, Ordering::SeqCst);
                previous - 1
            }
            Err(current) => current,
        }
    }

    /// A page succeeded: after as many successes in a row as pages are in flight, one slot
    /// comes back (up to the configured number). Returns the new limit when it grew.
    pub fn succeeded(&self) -> Option<usize> {
        let limit = self.limit.load(Ordering::SeqCst);
        if limit >= self.max {
            return None;
        }
        let streak = self.succeeded.fetch_add(1, Ordering::SeqCst) + 1;
        if streak < limit {
            return None;
        }
        let grown = self
            .limit
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |l| {
                (l < self.max).then_some(l + 1)
            })
            .ok()?;
        self.succeeded.store(0, Ordering::SeqCst);
        self.slots.add_permits(1);
        Some(grown + 1)
    }

    /// Pages in flight at most, now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn timeouts_take_slots_away_down_to_one() {
        let slots = PageSlots::new(3);
        let a = slots.acquire().await;
        let b = slots.acquire().await;
        assert_eq!(slots.shrink(a), 2);
        assert_eq!(slots.shrink(b), 1);
        // Two slots are gone: one is left, and it cannot be taken away.
        let c = slots.acquire().await;
        assert!(slots.slots.try_acquire().is_err(), "only one slot left");
        assert_eq!(slots.shrink(c), 1);
        let d = slots.acquire().await;
        assert!(slots.slots.try_acquire().is_err());
        drop(d);
        assert_eq!(slots.limit(), 1);
        // One success in a row at one page in flight: a slot comes back; then two in a row.
        assert_eq!(slots.succeeded(), Some(2));
        assert_eq!(slots.succeeded(), None);
        assert_eq!(slots.succeeded(), Some(3));
        // Never above the configured number.
        for _ in 0..10 {
            slots.succeeded();
        }
        assert_eq!(slots.limit(), 3);
        let held: Vec<_> = vec![
            slots.acquire().await,
            slots.acquire().await,
            slots.acquire().await,
        ];
        assert!(slots.slots.try_acquire().is_err(), "three slots, no more");
        drop(held);
    }
}
