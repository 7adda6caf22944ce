//! What in-process caches of database rows share: they are trusted only while a Postgres `LISTEN` on the channel
//! their rows' triggers notify is connected. Every notice (a change, a reconnect after which changes may have been
//! missed, a loss) empties the cache; while the listener is away the cache is bypassed; and a read that began
//! before a notice is not stored after it (a generation counter), so a change racing with a read is never hidden.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::error::AppResult;
use crate::store::listen::{Listener, Notice};

/// How a lookup went, for the caches' `{result}` counters.
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

/// Where a lookup found its row, and the generation to store a database read under.
pub enum Cached<T> {
    Found(T),
    /// Read the database, then store the row with this ticket.
    Read(Ticket),
}

/// The generation a database read started in; `None` when nothing may be stored (not listening).
#[derive(Clone, Copy, Debug)]
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

/// The cached row, or `read` from the database and kept under the lookup's ticket; counted in `looked_up{result}`
/// either way.
pub async fn through<T>(
    looked_up: &prometheus::IntCounterVec,
    cached: Cached<T>,
    read: impl std::future::Future<Output = AppResult<T>>,
    store: impl FnOnce(Ticket, &T),
) -> AppResult<T> {
    let (lookup, found) = match cached {
        Cached::Found(row) => (Lookup::Hit, Ok(row)),
        Cached::Read(ticket) => (ticket.lookup(), Err(ticket)),
    };
    looked_up.with_label_values(&[lookup.label()]).inc();
    match found {
        Ok(row) => Ok(row),
        Err(ticket) => {
            let row = read.await?;
            store(ticket, &row);
            Ok(row)
        }
    }
}

/// Whether a cache may be trusted now, and the generation its entries belong to.
#[derive(Debug, Default)]
pub struct Freshness {
    listening: bool,
    /// Bumped on every notice, so a read begun before it is not stored.
    generation: u64,
}

impl Freshness {
    pub fn is_listening(&self) -> bool {
        self.listening
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.listening.then_some(self.generation))
    }

    /// Whether a read made under `ticket` may be stored now.
    pub fn admits(&self, ticket: Ticket) -> bool {
        self.listening && ticket.0 == Some(self.generation)
    }

    /// This process changed what the cache holds: reads begun before are not stored (the caller empties the cache).
    pub fn bump(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// A notice was heard: the caller empties the cache, and trusts it again unless the listener was lost.
    pub fn heard(&mut self, notice: &Notice) {
        self.bump();
        self.listening = !matches!(notice, Notice::Lost);
    }
}

/// The longest an entry is trusted, even with no notice.
const MAX_AGE: Duration = Duration::from_secs(30);
/// Entries per map; a full map takes no more (lookups then read the database) until it is emptied.
const MAX_ENTRIES: usize = 10_000;

/// One map of a cache: rows by key, each with the moment it was read.
pub struct Entries<K, V> {
    map: HashMap<K, (V, Instant)>,
}

impl<K, V> Default for Entries<K, V> {
    fn default() -> Self {
        Entries { map: HashMap::new() }
    }
}

impl<K: Hash + Eq, V: Clone> Entries<K, V> {
    /// The row under `key` while `freshness` trusts the cache and the row is young enough; else a ticket to read it.
    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q, freshness: &Freshness) -> Cached<V>
    where
        K: Borrow<Q>,
    {
        match self.map.get(key) {
            Some((value, at)) if freshness.is_listening() && at.elapsed() < MAX_AGE => Cached::Found(value.clone()),
            _ => Cached::Read(freshness.ticket()),
        }
    }

    /// Keeps a row read under `ticket`, unless a notice came since or the map is full.
    pub fn store(&mut self, freshness: &Freshness, ticket: Ticket, key: K, value: V) {
        if freshness.admits(ticket) && self.map.len() < MAX_ENTRIES {
            self.map.insert(key, (value, Instant::now()));
        }
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.map.get_mut(key).map(|(value, _)| value)
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// What a cache keeps: its maps, and the freshness they are trusted by.
pub trait CacheState: Default + Send + 'static {
    fn freshness(&mut self) -> &mut Freshness;
    /// Empties every map.
    fn clear(&mut self);
}

/// A cache's state behind its lock, with the listener that empties it. Cheap to clone.
pub struct NoticedCache<S> {
    inner: Arc<Shared<S>>,
}

impl<S> Clone for NoticedCache<S> {
    fn clone(&self) -> Self {
        NoticedCache { inner: self.inner.clone() }
    }
}

impl<S: CacheState> Default for NoticedCache<S> {
    fn default() -> Self {
        NoticedCache { inner: Arc::new(Shared { state: Mutex::default(), stop: Mutex::default() }) }
    }
}

struct Shared<S> {
    state: Mutex<S>,
    /// Dropped with the cache, which stops its listener.
    stop: Mutex<Option<oneshot::Sender<()>>>,
}

impl<S: CacheState> Shared<S> {
    fn lock(&self) -> MutexGuard<'_, S> {
        // Every change is a whole insert, removal or clear, so the maps stay consistent whatever panicked.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Any change, a reconnect (changes may have been missed) or a loss empties the cache.
    fn heard(&self, notice: &Notice) {
        let mut state = self.lock();
        state.freshness().heard(notice);
        state.clear();
    }
}

impl<S: CacheState> NoticedCache<S> {
    pub fn state(&self) -> MutexGuard<'_, S> {
        self.inner.lock()
    }

    /// Listens on `channel` of `database_url` in the background (API processes). Until then, and whenever the
    /// listener is down, the cache is bypassed. Stops when the last clone of the cache is dropped.
    pub fn start_listening(&self, database_url: String, channel: &'static str, what: &'static str) {
        let stop = spawn_listener(Arc::downgrade(&self.inner), database_url, channel, what, Shared::heard);
        *self.inner.stop.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(stop);
    }

    pub fn is_listening(&self) -> bool {
        self.state().freshness().is_listening()
    }

    /// This process changed what the cache holds: forget at once, without waiting for the notice (which tells the
    /// other processes).
    pub fn changed(&self) {
        let mut state = self.state();
        state.freshness().bump();
        state.clear();
    }

    #[cfg(test)]
    pub(crate) fn heard(&self, notice: &Notice) {
        self.inner.heard(notice);
    }
}

/// Listens on `channel` in the background and hands every notice to `heard` while `cache` lives. Dropping the
/// returned sender (or the cache) stops it.
fn spawn_listener<T: Send + Sync + 'static>(
    cache: Weak<T>,
    database_url: String,
    channel: &'static str,
    what: &'static str,
    heard: fn(&T, &Notice),
) -> oneshot::Sender<()> {
    let (stop, mut stopped) = oneshot::channel();
    tokio::spawn(async move {
        let mut listener = Listener::new(database_url, channel, what);
        loop {
            let notice = tokio::select! {
                _ = &mut stopped => return,
                notice = listener.next() => notice,
            };
            let Some(cache) = cache.upgrade() else { return };
            heard(&cache, &notice);
        }
    });
    stop
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_admitted_until_listening_and_a_read_that_raced_a_notice_or_a_local_change_is_not() {
        let mut freshness = Freshness::default();
        let ticket = freshness.ticket();
        assert_eq!(ticket.lookup(), Lookup::Bypass);
        assert!(!freshness.admits(ticket));

        freshness.heard(&Notice::Connected);
        let ticket = freshness.ticket();
        assert_eq!(ticket.lookup(), Lookup::Miss);
        assert!(freshness.admits(ticket));
        freshness.heard(&Notice::Payload(String::new()));
        assert!(!freshness.admits(ticket), "read before a change");
        let ticket = freshness.ticket();
        freshness.bump();
        assert!(!freshness.admits(ticket), "read before a change made by this process");

        let ticket = freshness.ticket();
        freshness.heard(&Notice::Lost);
        assert!(!freshness.admits(ticket));
        assert_eq!(freshness.ticket().lookup(), Lookup::Bypass, "bypassed once the listener is lost");
    }
}
