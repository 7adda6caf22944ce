use crate::store::ids::{AccountId, OAuthStateId, TenantId, TokenConfigId};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_states")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: OAuthStateId,
    /// SHA-256 of the `state` sent to the provider; the state itself is never stored.
    pub state_hash: String,
    pub tenant_id: TenantId,
    pub account_id: AccountId,
    pub token_config_id: TokenConfigId,
    /// The configuration's token URL when the state was issued: the code is redeemed there only.
    pub token_url: String,
    /// Encrypted envelope (see `crypto`).
    pub pkce_verifier: String,
    pub return_url: Option<String>,
    pub created_by: String,
    pub expires_at: DateTimeUtc,
    pub consumed_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
