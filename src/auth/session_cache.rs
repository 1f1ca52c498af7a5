//! A short-lived, in-process memory of "this session is live and belongs to this
//! active user", so an authenticated request does not cost a database query for
//! the session on top of its own work.
//!
//! Everything in this process that ends a session or changes an account (logout,
//! refresh-token reuse, an admin's change) forgets the entries it affects, so
//! within one server such a change takes effect at once, as without the cache.
//! Another server process sharing the database sees it within
//! `DEVPOCKET_SESSION_CACHE_TTL`; a TTL of zero turns the cache off.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::db::users::User;

/// Entries are pruned of the expired ones when the map reaches this size, and
/// cleared if that is not enough: memory stays bounded whatever the traffic.
const MAX_ENTRIES: usize = 100_000;

struct Entry {
    user: User,
    until: Instant,
}

pub struct SessionCache {
    ttl: Duration,
    entries: RwLock<HashMap<Uuid, Entry>>,
}

impl SessionCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::default(),
        }
    }

    /// The user of a live session seen within the TTL, if it is `user_id`'s.
    pub fn get(&self, session_id: Uuid, user_id: Uuid) -> Option<User> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(&session_id)?;
        (entry.until > Instant::now() && entry.user.id == user_id).then(|| entry.user.clone())
    }

    /// Remembers a session just found live in the database.
    pub fn put(&self, session_id: Uuid, user: &User) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut entries) = self.entries.write() else {
            return;
        };
        let now = Instant::now();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.until > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            session_id,
            Entry {
                user: user.clone(),
                until: now + self.ttl,
            },
        );
    }

    /// A session ended (logout, refresh-token reuse).
    pub fn forget_session(&self, session_id: Uuid) {
        if let Ok(mut entries) = self.entries.write() {
            entries.remove(&session_id);
        }
    }

    /// Everything: each session is looked up anew.
    pub fn forget_all(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    /// An account changed (plan, deactivation): all its sessions are looked up anew.
    pub fn forget_user(&self, user_id: Uuid) {
        if let Ok(mut entries) = self.entries.write() {
            entries.retain(|_, e| e.user.id != user_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: Uuid) -> User {
        User {
            id,
            username: "ada".into(),
            email: "ada@example.com".into(),
            password_hash: String::new(),
            full_name: None,
            subscription_plan: crate::plans::Plan::Free,
            is_active: true,
            is_verified: false,
            last_login: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn remembers_live_sessions_until_told_otherwise() {
        let cache = SessionCache::new(Duration::from_secs(60));
        let (ada, bob) = (Uuid::new_v4(), Uuid::new_v4());
        let (s1, s2, s3) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        cache.put(s1, &user(ada));
        cache.put(s2, &user(ada));
        cache.put(s3, &user(bob));
        assert_eq!(cache.get(s1, ada).map(|u| u.id), Some(ada));
        // A token naming another user for this session is not vouched for.
        assert!(cache.get(s1, bob).is_none());
        cache.forget_session(s1);
        assert!(cache.get(s1, ada).is_none());
        assert!(cache.get(s2, ada).is_some());
        cache.forget_user(ada);
        assert!(cache.get(s2, ada).is_none());
        assert!(cache.get(s3, bob).is_some());
    }

    #[test]
    fn a_zero_ttl_remembers_nothing() {
        let cache = SessionCache::new(Duration::ZERO);
        let (id, session) = (Uuid::new_v4(), Uuid::new_v4());
        cache.put(session, &user(id));
        assert!(cache.get(session, id).is_none());
    }
}
