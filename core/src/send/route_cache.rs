//! The outbound accounts routing read lately, per tenant and sender address, so a submission does not pay a
//! database round trip to find its account (API processes only).
//!
//! A change to an outbound account that routing reads (created, deleted, its filter, default flag, enabled flag,
//! state or login changed) is announced on `postbridge_routes_changed` at commit (see the `route_notify`
//! migration), and every API process forgets all routes on hearing it. As with the authentication cache, the
//! cache is used only while that listener is connected, entries expire after 30 seconds, and a read that raced a
//! change is not kept. A change this process makes itself is forgotten at once ([`RouteCache::changed`]), so the
//! request after it already routes by it.

use std::sync::Arc;

use sea_orm::FromQueryResult;

use crate::model::AccountState;
use crate::store::ids::{AccountId, TenantId};
use crate::store::noticed::{CacheState, Cached, Entries, Freshness, NoticedCache, Ticket};

/// The channel the `route_notify` triggers notify.
pub const CHANNEL: &str = "postbridge_routes_changed";

/// An outbound account as routing sees it: the columns it reads, and nothing the cache need not hold.
#[derive(Clone, Debug, FromQueryResult)]
pub struct Candidate {
    pub id: AccountId,
    pub login: String,
    pub owner_subject: String,
    pub from_filter: Option<String>,
    pub is_default: bool,
    pub enabled: bool,
    pub state: AccountState,
    pub last_error: Option<String>,
}

/// A tenant and a sender address (lowercased): what routing's candidates depend on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SenderKey(TenantId, String);

impl SenderKey {
    pub fn new(tenant_id: TenantId, address: &str) -> Self {
        SenderKey(tenant_id, address.to_lowercase())
    }
}

#[derive(Default)]
struct State {
    freshness: Freshness,
    routes: Entries<SenderKey, Arc<[Candidate]>>,
}

impl CacheState for State {
    fn freshness(&mut self) -> &mut Freshness {
        &mut self.freshness
    }

    fn clear(&mut self) {
        self.routes.clear();
    }
}

/// Cheap to clone; one per process, inside `AppContext`.
#[derive(Clone, Default)]
pub struct RouteCache {
    cache: NoticedCache<State>,
}

impl RouteCache {
    /// Listens for changes on `database_url` in the background (API processes); see [`NoticedCache`].
    pub fn start_listening(&self, database_url: String) {
        self.cache.start_listening(database_url, CHANNEL, "the route cache listener");
    }

    pub fn is_listening(&self) -> bool {
        self.cache.is_listening()
    }

    pub fn get(&self, key: &SenderKey) -> Cached<Arc<[Candidate]>> {
        let state = self.cache.state();
        state.routes.get(key, &state.freshness)
    }

    pub fn store(&self, ticket: Ticket, key: SenderKey, candidates: Arc<[Candidate]>) {
        let state = &mut *self.cache.state();
        state.routes.store(&state.freshness, ticket, key, candidates);
    }

    /// This process changed an account: forget at once, without waiting for the notice (which tells the others).
    pub fn changed(&self) {
        self.cache.changed();
    }
}
