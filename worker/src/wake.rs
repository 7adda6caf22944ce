//! Work at once instead of at the next round. Two wake-ups:
//! - API processes announce committed submissions, and Postgres every other message that became due to send, on
//!   `postbridge_sends_due` (see `send::announce` and the `send_due_notify` migration); [`listen_for_sends`] wakes
//!   the scheduler, which claims and pushes sends at once.
//!   The scheduler's half-second pass stays as the backstop for a notification nobody heard.
//! - apalis-redis has no blocking fetch: an idle consumer looks for jobs only on its heartbeat. A job this process
//!   pushes therefore also wakes this process's consumer of that queue ([`QueueWakers`]); other processes' consumers
//!   still take their share on their own heartbeats and whenever they are busy.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::task::AtomicWaker;
use futures::Stream;
use postbridge_core::jobs::job::Queue;
use postbridge_core::store::listen::{Listener, Notice};
use postbridge_core::AppContext;
use tokio::sync::{Notify, Semaphore};

/// The channel API processes announce submissions on, and the `outbound_messages_due` trigger other sends due.
pub const SENDS_DUE: &str = postbridge_core::send::announce::CHANNEL;

/// Wakes `wake` for every announced send, and once on each (re)connect to catch up with what was missed, until
/// `stop`. Keeps `postbridge_worker_listening{channel}` at 1 while it listens.
pub async fn listen_for_sends(ctx: AppContext, wake: Arc<Notify>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut listener = Listener::new(ctx.settings.database_url.clone(), SENDS_DUE, "the send wake-up listener");
    let listening = ctx.metrics.worker_listening.with_label_values(&[SENDS_DUE]);
    loop {
        let notice = tokio::select! {
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
            notice = listener.next() => notice,
        };
        match notice {
            Notice::Connected | Notice::Payload(_) => {
                listening.set(1);
                wake.notify_one();
            }
            Notice::Lost => listening.set(0),
        }
    }
    listening.set(0);
}

/// One wake-up signal per queue, shared by this process's scheduler (which signals after a push) and consumers
/// (which fetch when signalled).
#[derive(Clone, Default)]
pub struct QueueWakers {
    send: Wake,
    poll: Wake,
    refresh: Wake,
    settle: Wake,
    webhook: Wake,
}

impl QueueWakers {
    pub fn of(&self, queue: Queue) -> &Wake {
        match queue {
            Queue::Send => &self.send,
            Queue::Poll => &self.poll,
            Queue::Refresh => &self.refresh,
            Queue::Settle => &self.settle,
            Queue::Webhook => &self.webhook,
        }
    }
}

/// A stream that yields once after one or more signals: the poll strategy of a consumer, which fetches whenever it
/// yields. Signals while nobody waits are kept as one.
#[derive(Clone, Default)]
pub struct Wake(Arc<WakeInner>);

#[derive(Default)]
struct WakeInner {
    waker: AtomicWaker,
    signalled: AtomicBool,
}

impl Wake {
    pub fn signal(&self) {
        self.0.signalled.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Stream for Wake {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let inner = &self.0;
        if inner.signalled.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(()));
        }
        // Registered before looking again, so a signal between the two looks is not lost.
        inner.waker.register(cx.waker());
        if inner.signalled.swap(false, Ordering::AcqRel) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// This process's send slots as its scheduler sees them. While every slot is busy, a submission's notice is not
/// claimed at once: what arrives meanwhile stays in Postgres and is claimed together, in larger batches, as soon as
/// a slot frees (or by the next pass). Under load a batch then carries many messages over one connection instead
/// of one or two; on an idle system nothing changes.
#[derive(Clone)]
pub struct SendSlots {
    slots: Arc<Semaphore>,
    deferred: Arc<AtomicBool>,
    sends_due: Arc<Notify>,
}

impl SendSlots {
    pub fn new(slots: Arc<Semaphore>, sends_due: Arc<Notify>) -> Self {
        SendSlots { slots, deferred: Arc::default(), sends_due }
    }

    /// Resolves when sends are due: a commit's notice (see [`listen_for_sends`]) or a slot freed after a wait.
    pub async fn due(&self) {
        self.sends_due.notified().await;
    }

    /// True when the notice should wait for a free slot; it is then claimed when one frees.
    pub fn defer_while_busy(&self) -> bool {
        if self.slots.available_permits() > 0 {
            return false;
        }
        self.deferred.store(true, Ordering::Release);
        // A slot that freed in between found nothing deferred: look again rather than wait for the pass.
        self.slots.available_permits() == 0
    }

    /// A send job ended and gave its slot back: claim what waited for it.
    pub fn freed(&self) {
        if self.deferred.swap(false, Ordering::AcqRel) {
            self.sends_due.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(due: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), due.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn a_notice_waits_only_while_every_slot_is_busy_and_a_freed_slot_wakes_the_claim_once() {
        let (slots, due) = (Arc::new(Semaphore::new(1)), Arc::new(Notify::new()));
        let send_slots = SendSlots::new(slots.clone(), due.clone());
        assert!(!send_slots.defer_while_busy(), "a free slot: claim at once");
        send_slots.freed();
        assert!(!woken(&due).await, "nothing waited, so a freed slot wakes nothing");

        let busy = slots.acquire().await.expect("the one slot");
        assert!(send_slots.defer_while_busy(), "every slot busy: the notice waits");
        drop(busy);
        send_slots.freed();
        assert!(woken(&due).await, "the freed slot wakes the claim");
        send_slots.freed();
        assert!(!woken(&due).await, "once per wait");
    }
}
