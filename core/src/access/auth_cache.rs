//! A short-lived, in-process copy of the rows authentication reads (API keys by prefix, tenants by id), so a request
//! does not pay two database round trips before its own work.
//!
//! Revocation and suspension still take effect at once, in every API process: the database announces each change
//! to a key or a tenant on `postbridge_auth_changed` (see the `auth_notify` migration), and every process empties
//! its cache on hearing it. The cache is used only while that listener is connected: from the moment it is lost
//! (and until it is back, when the cache starts empty) every request reads the database as if there were none, so a
//! change made while nobody listened is never missed. Entries also expire after [`MAX_AGE`], and a read that raced
//! with a change is not kept (a generation counter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::store::entities::{api_key, tenant};
use crate::store::ids::TenantId;
use crate::store::listen::{Listener, Notice};

/// The channel the `auth_notify` triggers notify.
pub const CHANNEL: &str = "postbridge_auth_changed";
/// The longest an entry is trusted, even with no notice.
const MAX_AGE: Duration = Duration::from_secs(30);
/// Entries per map; a full map takes no more (requests then read the database) until it is emptied.
const MAX_ENTRIES: usize = 10_000;

/// How a lookup went, for `postbridge_api_auth_cache_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    /// Not listening for changes: the database was read.
    Bypass,
}

impl Lookup {
    pub fn label(self) -> &'static str {
        match self {
            Lookup::Hit => "hit",
            Lookup::Miss => "miss",
            Lookup::Bypass => "bypass",
        }
    }
}

#[derive(Default)]
struct State {
    listening: bool,
    /// Bumped on every change heard (and on every connect or loss), so a read begun before it is not stored.
    generation: u64,
    keys: HashMap<String, (api_key::Model, Instant)>,
    tenants: HashMap<TenantId, (tenant::Model, Instant)>,
}

impl State {
    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.keys.clear();
        self.tenants.clear();
    }
}

/// Cheap to clone; one per process, inside `AppContext`.
#[derive(Clone, Default)]
pub struct AuthCache {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    /// Dropped with the cache, which stops its listener.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

/// Where a lookup found its row, and the generation to store a database read under.
pub enum Cached<T> {
    Found(T),
    /// Read the database, then [`AuthCache::store_key`] / [`AuthCache::store_tenant`] with this ticket.
    Read(Ticket),
}

/// The generation a database read started in; `None` when nothing may be stored (not listening).
#[derive(Clone, Copy)]
pub struct Ticket(Option<u64>);

impl Ticket {
    pub fn lookup(self) -> Lookup {
        if self.0.is_some() {
            Lookup::Miss
        } else {
            Lookup::Bypass
        }
    }
}

impl AuthCache {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every change is a whole insert, removal or clear, so the maps stay consistent whatever panicked.
        self.inner.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Listens for changes on `database_url` in the background (API processes). Until then, and whenever the
    /// listener is down, the cache is bypassed. Stops when the last clone of the cache is dropped.
    pub fn start_listening(&self, database_url: String) {
        let (stop, stopped) = oneshot::channel();
        *self.inner.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop);
        tokio::spawn(listen(Arc::downgrade(&self.inner), database_url, stopped));
    }

    pub fn is_listening(&self) -> bool {
        self.state().listening
    }

    pub fn key(&self, prefix: &str) -> Cached<api_key::Model> {
        let state = self.state();
        match state.keys.get(prefix) {
            Some((key, at)) if state.listening && at.elapsed() < MAX_AGE => Cached::Found(key.clone()),
            _ => Cached::Read(ticket(&state)),
        }
    }

    pub fn tenant(&self, id: TenantId) -> Cached<tenant::Model> {
        let state = self.state();
        match state.tenants.get(&id) {
            Some((tenant, at)) if state.listening && at.elapsed() < MAX_AGE => Cached::Found(tenant.clone()),
            _ => Cached::Read(ticket(&state)),
        }
    }

    pub fn store_key(&self, ticket: Ticket, key: &api_key::Model) {
        let mut state = self.state();
        if admits(&state, ticket, state.keys.len()) {
            state.keys.insert(key.prefix.clone(), (key.clone(), Instant::now()));
        }
    }

    pub fn store_tenant(&self, ticket: Ticket, tenant: &tenant::Model) {
        let mut state = self.state();
        if admits(&state, ticket, state.tenants.len()) {
            state.tenants.insert(tenant.id, (tenant.clone(), Instant::now()));
        }
    }

    /// Keeps the cached copy's `last_used_at` in step with the one just written, so the key is touched once a
    /// minute, not on every request.
    pub fn touched(&self, prefix: &str, at: chrono::DateTime<chrono::Utc>) {
        if let Some((key, _)) = self.state().keys.get_mut(prefix) {
            key.last_used_at = Some(at);
        }
    }

    /// This process changed a key or a tenant: forget at once, without waiting for the notice (which tells the
    /// other processes).
    pub fn changed(&self) {
        self.state().clear();
    }

    fn heard(&self, notice: &Notice) {
        let mut state = self.state();
        state.clear();
        state.listening = !matches!(notice, Notice::Lost);
    }
}

fn ticket(state: &State) -> Ticket {
    Ticket(state.listening.then_some(state.generation))
}

fn admits(state: &State, ticket: Ticket, len: usize) -> bool {
    state.listening && ticket.0 == Some(state.generation) && len < MAX_ENTRIES
}

async fn listen(cache: Weak<Inner>, database_url: String, mut stopped: oneshot::Receiver<()>) {
    let mut listener = Listener::new(database_url, CHANNEL, "the authentication cache listener");
    loop {
        let notice = tokio::select! {
            _ = &mut stopped => return,
            notice = listener.next() => notice,
        };
        let Some(inner) = cache.upgrade() else { return };
        // Any change, a reconnect (changes may have been missed) or a loss empties the cache.
        AuthCache { inner }.heard(&notice);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TenantStatus;

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
