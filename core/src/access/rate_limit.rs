//! Per-tenant API rate limits, shared by every API process through Redis.
//!
//! GCRA (generic cell rate algorithm) in one Lua script: per tenant Redis keeps only the "theoretical
//! arrival time" of the next request, so a check is one round trip and one key. The clock is Redis's own
//! (`TIME`), so API processes with skewed clocks still agree.
//!
//! Limit: the tenant's `api_rate_limit_per_minute`, else `POSTBRIDGE_API_RATE_LIMIT_PER_MINUTE` (0: off).
//! Burst: a whole minute's allowance. An idle tenant may spend its minute at once; the allowance then
//! refills evenly, one request every `60 / limit` seconds, so the sustained rate is the limit.
//!
//! A request's cost may be more than one: a GraphQL operation costs one per top-level field (each is about
//! what one REST request does). Requests without a valid credential are limited per client address instead
//! (`POSTBRIDGE_ANON_RATE_LIMIT_PER_MINUTE`), so guessing credentials or flooding unauthenticated is bounded.
//!
//! Redis unreachable or slow: the request is let through and a warning logged (fail open). A Redis
//! outage should not take the API down with it; the limit is a fairness measure, not a security boundary.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::context::AppContext;
use crate::store::ids::TenantId;

/// How long a limit check may take before the request is let through.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// KEYS[1]: the tenant's (or address's) key. ARGV[1]: milliseconds between requests at the sustained rate;
/// ARGV[2]: burst tolerance in milliseconds; ARGV[3]: the request's cost (at most the burst).
/// Returns {allowed (0/1), milliseconds until it would be allowed}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat + interval * (cost - 1) - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval * cost
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
return {1, 0}
";

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    /// Over the limit: try again after this many whole seconds (at least 1).
    Limited {
        retry_after_seconds: u64,
    },
}

/// One per API process: the script and a shared multiplexed Redis connection (reopened after an error).
pub struct RateLimiter {
    script: redis::Script,
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimiter {
    pub fn new() -> Self {
        RateLimiter { script: redis::Script::new(GCRA), connection: Mutex::new(None) }
    }

    /// Counts one request of `tenant_id` against its limit: the tenant's own (`own_limit`, as read while
    /// authenticating), else the deployment's.
    pub async fn check(&self, ctx: &AppContext, tenant_id: TenantId, own_limit: Option<i32>) -> Decision {
        self.check_cost(ctx, tenant_id, own_limit, 1).await
    }

    /// Counts `cost` requests of `tenant_id` at once (a GraphQL operation with several top-level fields).
    /// A cost above the tenant's whole allowance is counted as the whole allowance.
    pub async fn check_cost(&self, ctx: &AppContext, tenant_id: TenantId, own_limit: Option<i32>, cost: u32) -> Decision {
        let key = format!("{}:ratelimit:{tenant_id}", ctx.settings.redis_prefix);
        self.check_key(ctx, &key, limit_for(ctx, own_limit), cost).await
    }

    /// Counts one request without a valid credential from `address` (IPv6: its /64, which one client holds).
    pub async fn check_address(&self, ctx: &AppContext, address: IpAddr) -> Decision {
        let key = format!("{}:ratelimit:addr:{}", ctx.settings.redis_prefix, address_key(address));
        self.check_key(ctx, &key, ctx.settings.anon_rate_limit_per_minute, 1).await
    }

    async fn check_key(&self, ctx: &AppContext, key: &str, limit: u32, cost: u32) -> Decision {
        if limit == 0 || cost == 0 {
            return Decision::Allowed;
        }
        match tokio::time::timeout(CHECK_TIMEOUT, self.run_script(ctx, key, limit, cost.min(limit))).await {
            Ok(Ok(decision)) => decision,
            Ok(Err(e)) => {
                self.forget_connection();
                tracing::warn!(error = %e, "rate limit check failed; letting the request through");
                Decision::Allowed
            }
            Err(_) => {
                self.forget_connection();
                tracing::warn!("rate limit check timed out; letting the request through");
                Decision::Allowed
            }
        }
    }

    async fn run_script(&self, ctx: &AppContext, key: &str, limit: u32, cost: u32) -> redis::RedisResult<Decision> {
        let mut conn = self.connection(ctx).await?;
        let interval_ms = 60_000.0 / f64::from(limit);
        let tolerance_ms = interval_ms * f64::from(limit.saturating_sub(1));
        let (allowed, wait_ms): (i64, i64) = self
            .script
            .key(key)
            .arg(interval_ms.round().max(1.0) as i64)
            .arg(tolerance_ms.round() as i64)
            .arg(i64::from(cost))
            .invoke_async(&mut conn)
            .await?;
        if allowed == 1 {
            return Ok(Decision::Allowed);
        }
        let seconds = (wait_ms.max(0) as u64).div_ceil(1000).max(1);
        Ok(Decision::Limited { retry_after_seconds: seconds })
    }

    async fn connection(&self, ctx: &AppContext) -> redis::RedisResult<MultiplexedConnection> {
        if let Some(conn) = self.connection.lock().ok().and_then(|c| c.clone()) {
            return Ok(conn);
        }
        let conn = ctx.redis.get_multiplexed_async_connection().await?;
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(conn.clone());
        }
        Ok(conn)
    }

    /// A failed connection is not reused: the next check opens a new one.
    fn forget_connection(&self) {
        if let Ok(mut slot) = self.connection.lock() {
            *slot = None;
        }
    }
}

/// The rate-limit key of a client address: an IPv4 address whole, an IPv6 address by its /64 prefix
/// (IPv4-mapped IPv6 addresses count as the IPv4 address).
fn address_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The tenant's own limit, else the deployment's (0: no limit).
fn limit_for(ctx: &AppContext, own: Option<i32>) -> u32 {
    // The column's check keeps an override positive; anything else falls back to the deployment's.
    own.and_then(|limit| u32::try_from(limit).ok()).filter(|l| *l > 0).unwrap_or(ctx.settings.api_rate_limit_per_minute)
}

#[cfg(test)]
mod tests {
    use super::address_key;

    #[test]
    fn an_ipv6_client_is_keyed_by_its_64_prefix_and_a_mapped_ipv4_by_the_ipv4_address() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::2".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(address_key("::ffff:192.0.2.7".parse().unwrap()), "192.0.2.7");
        assert_eq!(address_key("192.0.2.7".parse().unwrap()), "192.0.2.7");
    }
}
