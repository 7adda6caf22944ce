//! The outbound accounts routing read lately, per tenant and sender address, so a submission does not pay a
//! database round trip to find its account (API processes only).
//!
//! A change to an outbound account that routing reads (created, deleted, its filter, default flag, enabled flag,
//! state or login changed) is announced on `postbridge_routes_changed` at commit (see the `route_notify`
//! migration), and every API process forgets all routes on hearing it. As with the authentication cache, the
//! cache is used only while that listener is connected, entries expire after 30 seconds, and a read that raced a
//! change is not kept. A change this process makes itself is forgotten at once ([`RouteCache::changed`]), so the
//! request after it already routes by it.

use std::sync::{Arc, Mutex, MutexGuard};

use sea_orm::FromQueryResult;
use tokio::sync::oneshot;

use crate::model::AccountState;
use crate::store::ids::{AccountId, TenantId};
use crate::store::listen::Notice;
use crate::store::noticed::{spawn_listener, Cached, Entries, Freshness, Ticket};

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

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Dropped with the cache, which stops its listener.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is a whole insert or clear, so the map stays consistent whatever panicked.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn heard(&self, notice: &Notice) {
        let mut state = self.state();
        state.freshness.heard(notice);
        state.routes.clear();
    }
}

/// Cheap to clone; one per process, inside `AppContext`.
#[derive(Clone, Default)]
pub struct RouteCache {
    inner: Arc<Inner>,
}

impl RouteCache {
    /// Listens for changes on `database_url` in the background (API processes). Until then, and whenever the
    /// listener is down, the cache is bypassed. Stops when the last clone of the cache is dropped.
    pub fn start_listening(&self, database_url: String) {
        let stop = spawn_listener(Arc::downgrade(&self.inner), database_url, CHANNEL, "the route cache listener", Inner::heard);
        *self.inner.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop);
    }

    pub fn is_listening(&self) -> bool {
        self.inner.state().freshness.is_listening()
    }

    pub fn get(&self, key: &SenderKey) -> Cached<Arc<[Candidate]>> {
        let state = self.inner.state();
        state.routes.get(key, &state.freshness)
    }

    pub fn store(&self, ticket: Ticket, key: SenderKey, candidates: Arc<[Candidate]>) {
        let state = &mut *self.inner.state();
        state.routes.store(&state.freshness, ticket, key, candidates);
    }

    /// This process changed an account: forget at once, without waiting for the notice (which tells the others).
    pub fn changed(&self) {
        let mut state = self.inner.state();
        state.freshness.bump();
        state.routes.clear();
    }
}
