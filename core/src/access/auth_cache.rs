//! A short-lived, in-process copy of the rows authentication reads (API keys by prefix, tenants by id), so a request
//! does not pay two database round trips before its own work.
//!
//! Revocation and suspension still take effect at once, in every API process: the database announces each change
//! to a key or a tenant on `postbridge_auth_changed` (see the `auth_notify` migration), and every process empties
//! its cache on hearing it. The cache is used only while that listener is connected: from the moment it is lost
//! (and until it is back, when the cache starts empty) every request reads the database as if there were none, so a
//! change made while nobody listened is never missed. Entries also expire after 30 seconds, and a read that raced
//! with a change is not kept (a generation counter).

use crate::store::entities::{api_key, tenant};
use crate::store::ids::TenantId;
#[cfg(test)]
use crate::store::listen::Notice;
use crate::store::noticed::{CacheState, Entries, Freshness, NoticedCache};
use crate::store::noticed::{Cached, Ticket};

/// The channel the `auth_notify` triggers notify.
pub const CHANNEL: &str = "postbridge_auth_changed";

#[derive(Default)]
struct State {
    freshness: Freshness,
    keys: Entries<String, api_key::Model>,
    tenants: Entries<TenantId, tenant::Model>,
}

impl CacheState for State {
    fn freshness(&mut self) -> &mut Freshness {
        &mut self.freshness
    }

    fn clear(&mut self) {
        self.keys.clear();
        self.tenants.clear();
    }
}

/// Cheap to clone; one per process, inside `AppContext`.
#[derive(Clone, Default)]
pub struct AuthCache {
    cache: NoticedCache<State>,
}

impl AuthCache {
    /// Listens for changes on `database_url` in the background (API processes); see [`NoticedCache`].
    pub fn start_listening(&self, database_url: String) {
        self.cache.start_listening(database_url, CHANNEL, "the authentication cache listener");
    }

    pub fn is_listening(&self) -> bool {
        self.cache.is_listening()
    }

    pub fn key(&self, prefix: &str) -> Cached<api_key::Model> {
        let state = self.cache.state();
        state.keys.get(prefix, &state.freshness)
    }

    pub fn tenant(&self, id: TenantId) -> Cached<tenant::Model> {
        let state = self.cache.state();
        state.tenants.get(&id, &state.freshness)
    }

    pub fn store_key(&self, ticket: Ticket, key: &api_key::Model) {
        let state = &mut *self.cache.state();
        state.keys.store(&state.freshness, ticket, key.prefix.clone(), key.clone());
    }

    pub fn store_tenant(&self, ticket: Ticket, tenant: &tenant::Model) {
        let state = &mut *self.cache.state();
        state.tenants.store(&state.freshness, ticket, tenant.id, tenant.clone());
    }

    /// Keeps the cached copy's `last_used_at` in step with the one just written, so the key is touched once a
    /// minute, not on every request.
    pub fn touched(&self, prefix: &str, at: chrono::DateTime<chrono::Utc>) {
        if let Some(key) = self.cache.state().keys.get_mut(prefix) {
            key.last_used_at = Some(at);
        }
    }

    /// This process changed a key or a tenant: forget at once, without waiting for the notice (which tells the
    /// other processes).
    pub fn changed(&self) {
        self.cache.changed();
    }

    #[cfg(test)]
    fn heard(&self, notice: &Notice) {
        self.cache.heard(notice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantStatus;
    use crate::store::noticed::Lookup;

    fn tenant(id: TenantId) -> tenant::Model {
        let now = chrono::Utc::now();
        tenant::Model {
            id,
            slug: "t".into(),
            name: "T".into(),
            status: TenantStatus::Active,
            allowed_return_origins: Default::default(),
            api_rate_limit_per_minute: None,
            display_name: None,
            logo_url: None,
            created_at: now,
            updated_at: now,
        }
    }

    fn read(cache: &AuthCache, id: TenantId) -> Option<Ticket> {
        match cache.tenant(id) {
            Cached::Found(_) => None,
            Cached::Read(ticket) => Some(ticket),
        }
    }

    #[test]
    fn nothing_is_kept_until_listening_and_a_read_that_raced_a_change_is_dropped() {
        let cache = AuthCache::default();
        let id = TenantId::from(uuid::Uuid::now_v7());
        let ticket = read(&cache, id).expect("a miss");
        assert_eq!(ticket.lookup(), Lookup::Bypass);
        cache.store_tenant(ticket, &tenant(id));
        assert!(read(&cache, id).is_some(), "not kept while not listening");

        cache.heard(&Notice::Connected);
        let ticket = read(&cache, id).expect("a miss");
        assert_eq!(ticket.lookup(), Lookup::Miss);
        cache.store_tenant(ticket, &tenant(id));
        assert!(read(&cache, id).is_none(), "a hit");

        let stale = read(&cache, TenantId::from(uuid::Uuid::now_v7())).expect("a miss");
        cache.heard(&Notice::Payload("tenants".into()));
        assert!(read(&cache, id).is_some(), "a change empties the cache");
        cache.store_tenant(stale, &tenant(id));
        assert!(read(&cache, id).is_some(), "a read begun before the change is not kept");

        let ticket = read(&cache, id).expect("a miss");
        cache.store_tenant(ticket, &tenant(id));
        cache.heard(&Notice::Lost);
        assert_eq!(read(&cache, id).map(Ticket::lookup), Some(Lookup::Bypass), "bypassed once the listener is lost");
    }
}
