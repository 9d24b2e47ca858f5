//! The cap on requests in flight upstream (`proxy.limits.max_upstream_connections`), and so on
//! the upstream's connections. One set of slots lives as long as the proxy: a reload resizes it
//! instead of making a fresh one, so streams that started before the reload still count against
//! the cap after it.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

pub struct UpstreamSlots {
    semaphore: Arc<Semaphore>,
    /// The cap now in force.
    cap: Mutex<usize>,
    /// Slots still to be retired after a shrink: held ones, retired as they come back.
    debt: Arc<AtomicUsize>,
}

/// One request's slot, held until its response body ends.
pub struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    debt: Arc<AtomicUsize>,
}

impl UpstreamSlots {
    pub fn new(cap: usize) -> UpstreamSlots {
        UpstreamSlots {
            semaphore: Arc::new(Semaphore::new(cap)),
            cap: Mutex::new(cap),
            debt: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Result<Slot, AcquireError> {
        let permit = self.semaphore.clone().acquire_owned().await?;
        Ok(Slot {
            permit: Some(permit),
            debt: self.debt.clone(),
        })
    }

    /// Makes `cap` the cap. Growing frees slots at once; shrinking retires free slots at once and
    /// held ones as their requests finish, so the count in flight never passes the new cap for
    /// longer than the requests already running.
    pub fn resize(&self, cap: usize) {
        let mut current = self.cap.lock().unwrap_or_else(|e| e.into_inner());
        if cap > *current {
            let grow = cap - *current;
            // Slots still owed from an earlier shrink are simply no longer owed.
            let owed = self
                .debt
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d - d.min(grow))
                })
                .unwrap_or(0);
            self.semaphore.add_permits(grow - owed.min(grow));
        } else if cap < *current {
            let shrink = *current - cap;
            let retired = self.semaphore.forget_permits(shrink);
            self.debt.fetch_add(shrink - retired, Ordering::AcqRel);
        }
        *current = cap;
    }

    /// Free slots now (for tests and metrics).
    #[cfg(test)]
    pub fn available(&self) -> usize {
        self.semaphore.available_permits()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let owed = self
            .debt
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| d.checked_sub(1));
        if owed.is_ok() {
            // Retired: the semaphore stays one smaller.
            permit.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resizing_keeps_held_slots_counted() {
        let slots = UpstreamSlots::new(3);
        let held: Vec<Slot> = vec![
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
            slots.acquire().await.unwrap(),
        ];
        assert_eq!(slots.available(), 0);
        // Down to 1 while 3 are held: nothing frees until two of them have come back.
        slots.resize(1);
        let mut held = held.into_iter();
        drop(held.next());
        assert_eq!(slots.available(), 0);
        drop(held.next());
        assert_eq!(slots.available(), 0);
        drop(held.next());
        assert_eq!(slots.available(), 1);

        // Back up to 4 with one held: three free.
        let one = slots.acquire().await.unwrap();
        slots.resize(4);
        assert_eq!(slots.available(), 3);
        drop(one);
        assert_eq!(slots.available(), 4);
    }

    #[tokio::test]
    async fn a_shrink_then_a_grow_cancel_out() {
        let slots = UpstreamSlots::new(2);
        let a = slots.acquire().await.unwrap();
        let b = slots.acquire().await.unwrap();
        slots.resize(1);
        slots.resize(2);
        drop(a);
        drop(b);
        assert_eq!(slots.available(), 2);
    }
}
