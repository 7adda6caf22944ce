//! Live events for GraphQL subscriptions: one Postgres `LISTEN postbridge_events` per API process, fanned
//! out to the subscribers of each tenant.
//!
//! The database announces an inserted event at commit (`<tenant_id> <event_id> <event_type>`, see the
//! `observability` migration) when some process watches its tenant (`observe::live_watchers`): a subscription is
//! answered once this process's watch on its tenant is written, and the watch is renewed while subscribers stay.
//! The hub loads an event's row once, and only when its tenant has subscribers, then hands the same copy to all of
//! them. Notifications sent while the listener is reconnecting are lost:
//! subscriptions are a live view, the event list is the record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use anyhow::Context as _;
use postbridge_core::error::{AppError, AppResult};
use postbridge_core::observe::events::{self, Event};
use postbridge_core::observe::live_watchers;
use postbridge_core::store::ids::TenantId;
use postbridge_core::store::listen::{Listener, Notice};
use postbridge_core::store::tenant_wall;
use postbridge_core::AppContext;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

/// The channel the `events_inserted` trigger notifies.
const CHANNEL: &str = "postbridge_events";
/// Events a slow subscriber may fall behind by before it misses some.
const BUFFER: usize = 256;
/// Live subscriptions of one tenant on one API process: each costs a copy of every event it is shown (and, for a
/// member, a look-up), so a tenant opening thousands would slow every other tenant's.
pub const MAX_SUBSCRIBERS_PER_TENANT: usize = 500;
/// How long a watch on a tenant holds unless renewed: after a process dies, its tenants' events stop being
/// announced for it this much later.
const WATCH_SECONDS: i64 = 60;
/// How often the watches of tenants with subscribers are renewed (and those without ended).
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Shared by every connection of one API process; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: AppContext,
    tenants: Mutex<HashMap<TenantId, broadcast::Sender<Arc<Event>>>>,
    /// Dropped with the hub, which stops the listener task.
    _stop: oneshot::Sender<()>,
}

impl Inner {
    fn tenants(&self) -> MutexGuard<'_, HashMap<TenantId, broadcast::Sender<Arc<Event>>>> {
        // The map stays consistent whatever panicked while holding it: every change is a single insert or remove.
        self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands the announced event to its tenant's subscribers, if it has any.
    async fn dispatch(&self, payload: &str) {
        let mut parts = payload.split_whitespace();
        let (Some(tenant), Some(event), Some(_type)) = (parts.next(), parts.next(), parts.next()) else {
            tracing::warn!(payload, "ignoring a malformed event notification");
            return;
        };
        let (Ok(tenant_id), Ok(event_id)) = (tenant.parse::<TenantId>(), Uuid::parse_str(event)) else {
            tracing::warn!(payload, "ignoring a malformed event notification");
            return;
        };
        let sender = match self.tenants().get(&tenant_id) {
            Some(sender) if sender.receiver_count() > 0 => sender.clone(),
            _ => return,
        };
        match events::load(&self.ctx.db, tenant_id, event_id).await {
            // No receiver left since the lookup is fine: nobody is waiting for it any more.
            Ok(Some(event)) => drop(sender.send(Arc::new(event))),
            // Purged or its tenant deleted in the meantime.
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, %event_id, "could not load an event for live subscribers"),
        }
    }
}

impl EventHub {
    /// Starts listening in the background; needs a Tokio runtime. Stops when the last clone is dropped.
    pub fn start(ctx: AppContext) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().context("the event hub needs a Tokio runtime")?;
        let (stop, stopped) = oneshot::channel();
        let inner = Arc::new(Inner { ctx, tenants: Mutex::new(HashMap::new()), _stop: stop });
        runtime.spawn(listen(Arc::downgrade(&inner), stopped));
        runtime.spawn(keep_watching(Arc::downgrade(&inner)));
        Ok(EventHub { inner })
    }

    /// The events of one tenant from now on: every event committed after this returns is delivered. The caller has
    /// checked that its principal may see them.
    pub async fn subscribe(&self, tenant_id: TenantId) -> AppResult<TenantEvents> {
        let receiver = {
            let mut tenants = self.inner.tenants();
            let sender = tenants.entry(tenant_id).or_insert_with(|| broadcast::channel(BUFFER).0);
            if sender.receiver_count() >= MAX_SUBSCRIBERS_PER_TENANT {
                return Err(AppError::Conflict {
                    code: "too_many_subscriptions",
                    message: format!(
                        "this tenant already has {MAX_SUBSCRIBERS_PER_TENANT} live subscriptions on this server; end some first"
                    ),
                });
            }
            sender.subscribe()
        };
        let events = TenantEvents { receiver: Some(receiver), tenant_id, hub: self.inner.clone() };
        // Written on every subscription (they are rare), so none is answered before its tenant is watched.
        let ctx = &self.inner.ctx;
        tenant_wall::system(live_watchers::watch(&ctx.db, ctx.instance_id, &[tenant_id], WATCH_SECONDS)).await?;
        Ok(events)
    }
}

/// One subscriber's feed of its tenant's events.
pub struct TenantEvents {
    receiver: Option<broadcast::Receiver<Arc<Event>>>,
    tenant_id: TenantId,
    hub: Arc<Inner>,
}

impl TenantEvents {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// The next event; `None` only if the hub has gone away.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        let receiver = self.receiver.as_mut()?;
        loop {
            match receiver.recv().await {
                Ok(event) => return Some(event),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(tenant_id = %self.tenant_id, missed, "a live subscriber fell behind and missed events");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for TenantEvents {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut tenants = self.hub.tenants();
        // The last subscriber of a tenant takes its channel away, so idle tenants cost nothing.
        if tenants.get(&self.tenant_id).is_some_and(|sender| sender.receiver_count() == 0) {
            tenants.remove(&self.tenant_id);
        }
    }
}

/// Renews the watches of the tenants that still have subscribers and ends the others'.
async fn renew_watches(inner: &Inner) {
    let watched: Vec<TenantId> =
        inner.tenants().iter().filter(|(_, sender)| sender.receiver_count() > 0).map(|(&tenant_id, _)| tenant_id).collect();
    let ctx = &inner.ctx;
    let renewed = tenant_wall::system(live_watchers::renew(&ctx.db, ctx.instance_id, &watched, WATCH_SECONDS)).await;
    if let Err(e) = renewed {
        tracing::warn!(error = %e, "could not renew the live event watches; retried in {RENEW_EVERY:?}");
    }
}

/// Renews the watches every [`RENEW_EVERY`] until the hub is dropped.
async fn keep_watching(hub: Weak<Inner>) {
    let mut renew = tokio::time::interval(RENEW_EVERY);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        renew.tick().await;
        let Some(inner) = hub.upgrade() else { return };
        renew_watches(&inner).await;
    }
}

/// Listens until the hub is dropped; the listener reconnects by itself whenever the connection fails.
async fn listen(hub: Weak<Inner>, mut stopped: oneshot::Receiver<()>) {
    let Some(url) = hub.upgrade().map(|inner| inner.ctx.settings.database_url.clone()) else { return };
    let mut listener = Listener::new(url, CHANNEL, "the live event listener");
    loop {
        let notice = tokio::select! {
            _ = &mut stopped => return,
            notice = listener.next() => notice,
        };
        // A reconnect has nothing to catch up: subscriptions are a live view, the event list is the record.
        if let Notice::Payload(payload) = notice {
            let Some(inner) = hub.upgrade() else { return };
            inner.dispatch(&payload).await;
        }
    }
}
