//! Concurrent requests per key (threat 9): a slow or streaming request holds a permit until its
//! response body ends, so one key cannot tie up the upstream's workers. A reload keeps the
//! semaphore of every key whose limit did not change, so requests in flight still count.

use std::{collections::HashMap, sync::Arc};

use http::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::proxy::reject::Reject;

pub struct Concurrency {
    limit: usize,
    per_key: HashMap<Arc<str>, Arc<Semaphore>>,
}

impl Concurrency {
    pub fn new(
        names: impl IntoIterator<Item = Arc<str>>,
        limit: usize,
        previous: Option<&Concurrency>,
    ) -> Concurrency {
        let kept = previous.filter(|p| p.limit == limit);
        Concurrency {
            limit,
            per_key: names
                .into_iter()
                .map(|name| {
                    let semaphore = kept
                        .and_then(|p| p.per_key.get(&name).cloned())
                        .unwrap_or_else(|| Arc::new(Semaphore::new(limit)));
                    (name, semaphore)
                })
                .collect(),
        }
    }

    /// A permit to hold until the response is finished.
    pub fn acquire(&self, name: &str) -> Result<Option<OwnedSemaphorePermit>, Reject> {
        let Some(semaphore) = self.per_key.get(name) else {
            return Ok(None);
        };
        match semaphore.clone().try_acquire_owned() {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => {
                let mut reject = Reject::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "concurrency_key",
                    "too many requests in flight for this key",
                );
                reject.retry_after = Some(1);
                Err(reject)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_come_back_on_drop() {
        let concurrency = Concurrency::new(["a".into()], 2, None);
        let first = concurrency.acquire("a").unwrap();
        let second = concurrency.acquire("a").unwrap();
        let table = [(concurrency.acquire("a").is_ok(), false)];
        for (got, want) in table {
            assert_eq!(got, want);
        }
        drop(first);
        assert!(concurrency.acquire("a").is_ok());
        // A rebuild with the same limit shares the permits still held.
        let rebuilt = Concurrency::new(["a".into()], 2, Some(&concurrency));
        let third = rebuilt.acquire("a").unwrap();
        assert!(rebuilt.acquire("a").is_err(), "second and third hold both");
        drop(third);
        drop(second);
        assert!(
            concurrency.acquire("other").unwrap().is_none(),
            "unknown names are not limited"
        );
    }
}
