//! Every column that holds a sealed secret, named once. A `SealedColumn` knows its table and column, so sealing
//! and opening need only the row's tenant and id: the ciphertext is bound to exactly that place
//! (`crypto::SecretLocation`), and `rekey` walks `ALL` to re-seal everything under a new master key.

pub mod crypto;
pub mod rekey;

use uuid::Uuid;

use crate::error::AppError;
use crate::secrets::crypto::{Cipher, CryptoError, SecretLocation};
use crate::store::ids::TenantId;

/// A text column whose values are sealed by `Cipher`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedColumn {
    pub table: &'static str,
    pub column: &'static str,
}

pub const TOKEN_CONFIG_CLIENT_SECRET: SealedColumn = SealedColumn { table: "token_configs", column: "client_secret" };
pub const TOKEN_CONFIG_CLIENT_SECRET_NEXT: SealedColumn = SealedColumn { table: "token_configs", column: "client_secret_next" };
pub const ACCOUNT_PASSWORD: SealedColumn = SealedColumn { table: "email_accounts", column: "password" };
pub const GRANT_ACCESS_TOKEN: SealedColumn = SealedColumn { table: "grants", column: "access_token" };
pub const GRANT_REFRESH_TOKEN: SealedColumn = SealedColumn { table: "grants", column: "refresh_token" };
pub const OAUTH_STATE_PKCE_VERIFIER: SealedColumn = SealedColumn { table: "oauth_states", column: "pkce_verifier" };
pub const WEBHOOK_SECRET: SealedColumn = SealedColumn { table: "webhook_endpoints", column: "secret" };
pub const WEBHOOK_PREVIOUS_SECRET: SealedColumn = SealedColumn { table: "webhook_endpoints", column: "previous_secret" };

/// Every sealed column. A new secret column is added here, or `rotate-keys` leaves it under the old key.
pub const ALL: [SealedColumn; 8] = [
    TOKEN_CONFIG_CLIENT_SECRET,
    TOKEN_CONFIG_CLIENT_SECRET_NEXT,
    ACCOUNT_PASSWORD,
    GRANT_ACCESS_TOKEN,
    GRANT_REFRESH_TOKEN,
    OAUTH_STATE_PKCE_VERIFIER,
    WEBHOOK_SECRET,
    WEBHOOK_PREVIOUS_SECRET,
];

/// A secret that could not be sealed or opened, naming where it lives (never what it is).
#[derive(Debug, thiserror::Error)]
#[error("{action} {table}.{column} of row {row_id}: {source}")]
pub struct SecretError {
    action: &'static str,
    table: &'static str,
    column: &'static str,
    row_id: Uuid,
    #[source]
    source: CryptoError,
}

impl From<SecretError> for AppError {
    fn from(err: SecretError) -> Self {
        AppError::Internal(err.into())
    }
}

impl SealedColumn {
    /// The place a value of this column is bound to.
    pub fn location(self, tenant_id: TenantId, row_id: impl Into<Uuid>) -> SecretLocation<'static> {
        SecretLocation { tenant_id, table: self.table, column: self.column, row_id: row_id.into() }
    }

    /// Seals `plain` for this column of row `row_id`.
    pub fn seal(self, cipher: &Cipher, tenant_id: TenantId, row_id: impl Into<Uuid>, plain: &str) -> Result<String, SecretError> {
        let row_id = row_id.into();
        cipher.encrypt(self.location(tenant_id, row_id), plain).map_err(|source| self.error("sealing", row_id, source))
    }

    /// Opens a value stored in this column of row `row_id`.
    pub fn open(
        self,
        cipher: &Cipher,
        tenant_id: TenantId,
        row_id: impl Into<Uuid>,
        stored: &str,
    ) -> Result<String, SecretError> {
        let row_id = row_id.into();
        cipher.decrypt(self.location(tenant_id, row_id), stored).map_err(|source| self.error("opening", row_id, source))
    }

    fn error(self, action: &'static str, row_id: Uuid, source: CryptoError) -> SecretError {
        SecretError { action, table: self.table, column: self.column, row_id, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sealed_column_is_listed_once() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(ALL.iter().skip(i + 1).all(|b| a != b), "{a:?} listed twice");
        }
    }
}
