//! A short-lived, in-process memory of each user's list of environments, so that a
//! phone polling `GET /api/v1/environments` is answered without a database query.
//!
//! Everything in this process that changes an environment row the list shows (the
//! routes, and the actors through `DbStore`) forgets its owner's list, so within
//! one server a change is seen at once, as without the cache. Another server
//! process sharing the database — one whose actor drives the environment — is seen
//! within `DEVPOCKET_LIST_CACHE_TTL`; a TTL of zero turns the cache off.
//!
//! A list read from the database while a change was being written must not be
//! kept: each user's slot carries a version, bumped by every change, and a list is
//! kept only if the version it was read under is still the slot's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use uuid::Uuid;

use super::EnvironmentResponse;

/// Slots are pruned of all but the fresh lists when the map reaches this size,
/// and cleared if that is not enough: memory stays bounded (a few KiB a slot)
/// whatever the number of users.
const MAX_SLOTS: usize = 10_000;

/// A user's environments as the list answers them, oldest first.
#[derive(Debug)]
pub struct CachedList {
    pub environments: Vec<EnvironmentResponse>,
    /// `environments` as the JSON body of the unfiltered list.
    pub body: Bytes,
}

struct Slot {
    version: u64,
    list: Option<(Instant, Arc<CachedList>)>,
}

/// What a miss hands the caller: the version to store its list under.
#[must_use]
pub struct Ticket {
    user_id: Uuid,
    version: u64,
}

pub struct ListCache {
    ttl: Duration,
    slots: RwLock<HashMap<Uuid, Slot>>,
    versions: AtomicU64,
}

impl ListCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            slots: RwLock::default(),
            versions: AtomicU64::new(1),
        }
    }

    /// The user's list if one was kept within the TTL; otherwise a ticket to keep
    /// the list the caller is about to read.
    pub fn get(&self, user_id: Uuid) -> Result<Arc<CachedList>, Ticket> {
        let now = Instant::now();
        if let Ok(slots) = self.slots.read() {
            match slots.get(&user_id) {
                Some(Slot {
                    list: Some((until, list)),
                    ..
                }) if *until > now => return Ok(list.clone()),
                Some(slot) if slot.list.is_none() => {
                    return Err(Ticket {
                        user_id,
                        version: slot.version,
                    });
                }
                _ => {}
            }
        }
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        if !self.ttl.is_zero()
            && let Ok(mut slots) = self.slots.write()
        {
            if slots.len() >= MAX_SLOTS {
                slots.retain(|_, s| s.list.as_ref().is_some_and(|(until, _)| *until > now));
                if slots.len() >= MAX_SLOTS {
                    slots.clear();
                }
            }
            slots.insert(
                user_id,
                Slot {
                    version,
                    list: None,
                },
            );
        }
        Err(Ticket { user_id, version })
    }

    /// Keeps a list read from the database after `ticket` was handed out, unless
    /// the user's environments changed since.
    pub fn put(&self, ticket: Ticket, list: Arc<CachedList>) {
        let Ok(mut slots) = self.slots.write() else {
            return;
        };
        if let Some(slot) = slots.get_mut(&ticket.user_id)
            && slot.version == ticket.version
        {
            slot.list = Some((Instant::now() + self.ttl, list));
        }
    }

    /// One of the user's environments changed (or was created or deleted).
    pub fn forget(&self, user_id: Uuid) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut slots) = self.slots.write()
            && let Some(slot) = slots.get_mut(&user_id)
        {
            *slot = Slot {
                version,
                list: None,
            };
        }
    }

    /// Something every list shows changed (a template's name).
    pub fn forget_all(&self) {
        if let Ok(mut slots) = self.slots.write() {
            slots.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> Arc<CachedList> {
        Arc::new(CachedList {
            environments: Vec::new(),
            body: Bytes::from_static(b"[]"),
        })
    }

    fn miss(cache: &ListCache, user: Uuid) -> Ticket {
        match cache.get(user) {
            Ok(_) => panic!("expected a miss"),
            Err(ticket) => ticket,
        }
    }

    #[test]
    fn keeps_a_list_until_its_owner_changes() {
        let cache = ListCache::new(Duration::from_secs(60));
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let ticket = miss(&cache, ada);
        cache.put(ticket, list());
        assert!(cache.get(ada).is_ok());
        let ticket = miss(&cache, bob);
        cache.put(ticket, list());
        cache.forget(ada);
        assert!(cache.get(ada).is_err());
        assert!(cache.get(bob).is_ok());
        cache.forget_all();
        assert!(cache.get(bob).is_err());
    }

    #[test]
    fn a_list_read_during_a_change_is_not_kept() {
        let cache = ListCache::new(Duration::from_secs(60));
        let ada = Uuid::new_v4();
        // Read begins, a change is written, the read (maybe of the old row) ends.
        let ticket = miss(&cache, ada);
        cache.forget(ada);
        cache.put(ticket, list());
        assert!(cache.get(ada).is_err());
        // Two reads at once: the first to finish is kept.
        let (first, second) = (miss(&cache, ada), miss(&cache, ada));
        cache.put(first, list());
        cache.put(second, list());
        assert!(cache.get(ada).is_ok());
    }

    #[test]
    fn a_change_during_a_read_is_seen_even_after_a_clear() {
        let cache = ListCache::new(Duration::from_secs(60));
        let ada = Uuid::new_v4();
        let ticket = miss(&cache, ada);
        cache.forget_all();
        let _newer = miss(&cache, ada);
        cache.put(ticket, list());
        assert!(cache.get(ada).is_err());
    }

    #[test]
    fn memory_stays_bounded_whatever_the_number_of_users() {
        let cache = ListCache::new(Duration::from_secs(60));
        for _ in 0..MAX_SLOTS * 2 {
            let ticket = miss(&cache, Uuid::new_v4());
            cache.put(ticket, list());
        }
        let slots = cache.slots.read().map(|s| s.len()).unwrap_or(usize::MAX);
        assert!(slots <= MAX_SLOTS, "{slots} slots");
    }

    #[test]
    fn a_zero_ttl_keeps_nothing() {
        let cache = ListCache::new(Duration::ZERO);
        let ada = Uuid::new_v4();
        let ticket = miss(&cache, ada);
        cache.put(ticket, list());
        assert!(cache.get(ada).is_err());
    }
}
