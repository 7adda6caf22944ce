//! How the scheduler cuts claimed messages into send jobs.

use std::collections::HashMap;

use crate::store::ids::{AccountId, OutboundMessageId, TenantId};

/// The most messages one send job takes: sent one after another over one connection, so a batch is short.
pub const SEND_BATCH: usize = 16;
/// An account's backlog is spread over at least this many jobs (and so connections) before batches grow.
const CONNECTIONS_PER_ACCOUNT: usize = 4;

/// Whose messages a batch holds: one tenant's account (none when it was deleted).
type Owner = (TenantId, Option<AccountId>);

/// Claimed messages as send jobs: each holds one tenant's account's messages, in claim order. A few due messages
/// go out side by side, one per job; a backlog goes in batches of up to [`SEND_BATCH`], spread over
/// [`CONNECTIONS_PER_ACCOUNT`] jobs at least.
pub fn batches_of(due: Vec<(OutboundMessageId, TenantId, Option<AccountId>)>) -> Vec<(TenantId, Vec<OutboundMessageId>)> {
    let mut groups: Vec<(Owner, Vec<OutboundMessageId>)> = Vec::new();
    let mut index: HashMap<Owner, usize> = HashMap::new();
    for (message_id, tenant_id, account_id) in due {
        let key = (tenant_id, account_id);
        let at = *index.entry(key).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[at].1.push(message_id);
    }
    let mut batches = Vec::new();
    for ((tenant_id, _), ids) in groups {
        let size = ids.len().div_ceil(CONNECTIONS_PER_ACCOUNT).clamp(1, SEND_BATCH);
        batches.extend(ids.chunks(size).map(|chunk| (tenant_id, chunk.to_vec())));
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_one_account_in_claim_order_and_spread_a_backlog() {
        let (tenant, other_tenant) = (TenantId::new(), TenantId::new());
        let (account, other_account) = (AccountId::new(), AccountId::new());
        let ids: Vec<OutboundMessageId> = (0..70).map(|_| OutboundMessageId::new()).collect();
        // 3 of one account, then a backlog of 64 of another, 2 of another tenant, one with no account left.
        let mut due: Vec<_> = ids[..3].iter().map(|&id| (id, tenant, Some(account))).collect();
        due.extend(ids[3..67].iter().map(|&id| (id, tenant, Some(other_account))));
        due.extend(ids[67..69].iter().map(|&id| (id, other_tenant, Some(account))));
        due.push((ids[69], tenant, None));
        let batches = batches_of(due);
        let sizes: Vec<usize> = batches.iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [1, 1, 1, 16, 16, 16, 16, 1, 1, 1], "a few side by side, a backlog in full batches");
        assert_eq!(batches[3].1, ids[3..19], "claim order kept");
        assert!(batches[7..9].iter().all(|(t, _)| *t == other_tenant), "never two tenants in one batch");
        let all: Vec<OutboundMessageId> = batches.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(all.len(), 70);
        let backlog_of_twenty: Vec<_> = ids[..20].iter().map(|&id| (id, tenant, Some(account))).collect();
        let sizes: Vec<usize> = batches_of(backlog_of_twenty).iter().map(|(_, b)| b.len()).collect();
        assert_eq!(sizes, [5, 5, 5, 5], "spread over four connections before batches grow");
    }
}
