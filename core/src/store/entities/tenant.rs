use crate::store::ids::TenantId;
use sea_orm::entity::prelude::*;

use crate::store::json::StringList;

use crate::model::TenantStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tenants")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    pub status: TenantStatus,
    /// Origins a post-consent return URL may point at.
    #[sea_orm(column_type = "JsonBinary")]
    pub allowed_return_origins: StringList,
    /// Overrides `POSTBRIDGE_API_RATE_LIMIT_PER_MINUTE` for this tenant.
    pub api_rate_limit_per_minute: Option<i32>,
    /// Shown on the consent result page instead of `name`.
    pub display_name: Option<String>,
    /// An https image shown on the consent result page.
    pub logo_url: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
