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
//! Redis unreachable or slow: the request is let through and a warning logged (fail open). A Redis
//! outage should not take the API down with it; the limit is a fairness measure, not a security boundary.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use uuid::Uuid;

use crate::context::AppContext;

/// How long a limit check may take before the request is let through.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// KEYS[1]: the tenant's key. ARGV[1]: milliseconds between requests at the sustained rate;
/// ARGV[2]: burst tolerance in milliseconds. Returns {allowed (0/1), milliseconds until the next is allowed}.
const GCRA: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
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
    pub async fn check(&self, ctx: &AppContext, tenant_id: Uuid, own_limit: Option<i32>) -> Decision {
        let limit = limit_for(ctx, own_limit);
        if limit == 0 {
            return Decision::Allowed;
        }
        let key = format!("{}:ratelimit:{tenant_id}", ctx.settings.redis_prefix);
        match tokio::time::timeout(CHECK_TIMEOUT, self.run_script(ctx, &key, limit)).await {
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

    async fn run_script(&self, ctx: &AppContext, key: &str, limit: u32) -> redis::RedisResult<Decision> {
        let mut conn = self.connection(ctx).await?;
        let interval_ms = 60_000.0 / f64::from(limit);
        let tolerance_ms = interval_ms * f64::from(limit.saturating_sub(1));
        let (allowed, wait_ms): (i64, i64) = self
            .script
            .key(key)
            .arg(interval_ms.round().max(1.0) as i64)
            .arg(tolerance_ms.round() as i64)
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

/// The tenant's own limit, else the deployment's (0: no limit).
fn limit_for(ctx: &AppContext, own: Option<i32>) -> u32 {
    // The column's check keeps an override positive; anything else falls back to the deployment's.
    own.and_then(|limit| u32::try_from(limit).ok()).filter(|l| *l > 0).unwrap_or(ctx.settings.api_rate_limit_per_minute)
}
