//! JWT keys: verification by `kid` among the configured keys only, each pinned to its algorithm, and issuance
//! with the signing key. Held by the context; `auth` turns verified claims into a principal.

use std::collections::HashMap;

use chrono::Utc;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::{JwtAlgorithm, JwtKeyMaterial, JwtSettings};
use crate::error::{AppError, AppResult};
use crate::model::{IssuedToken, Role};
use crate::store::ids::TenantId;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub role: Role,
    /// Tenant id; absent for operators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<TenantId>,
}

struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
    /// Only Postbridge's own signing key may carry the operator role; any other key (an identity provider's)
    /// is limited to tenant roles.
    may_grant_operator: bool,
    /// Tokens of this key act in this tenant only.
    tenant: Option<Uuid>,
}

/// Configured JWT keys: verification by `kid` only among these, each pinned to its algorithm.
pub struct JwtKeys {
    verifying: HashMap<String, VerifyingKey>,
    signing_kid: String,
    signing_algorithm: Algorithm,
    signing_key: EncodingKey,
    issuer: String,
    audience: String,
    ttl_seconds: i64,
    leeway_seconds: u64,
}

fn to_algorithm(alg: JwtAlgorithm) -> Algorithm {
    match alg {
        JwtAlgorithm::HS256 => Algorithm::HS256,
        JwtAlgorithm::HS384 => Algorithm::HS384,
        JwtAlgorithm::HS512 => Algorithm::HS512,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
    }
}

impl JwtKeys {
    pub fn new(settings: &JwtSettings) -> anyhow::Result<Self> {
        let mut verifying = HashMap::new();
        let mut signing = None;
        for key in &settings.keys {
            let algorithm = to_algorithm(key.algorithm);
            let decoding = match (&key.material, key.algorithm) {
                (JwtKeyMaterial::Secret(secret), _) => {
                    if key.kid == settings.signing_key_id {
                        signing = Some(EncodingKey::from_secret(secret));
                    }
                    DecodingKey::from_secret(secret)
                }
                (JwtKeyMaterial::PublicPem(pem), JwtAlgorithm::ES256 | JwtAlgorithm::ES384) => DecodingKey::from_ec_pem(pem)
                    .map_err(|e| anyhow::anyhow!("JWT key {}: invalid EC public key PEM: {e}", key.kid))?,
                (JwtKeyMaterial::PublicPem(pem), _) => DecodingKey::from_rsa_pem(pem)
                    .map_err(|e| anyhow::anyhow!("JWT key {}: invalid RSA public key PEM: {e}", key.kid))?,
            };
            let may_grant_operator = key.kid == settings.signing_key_id;
            verifying.insert(key.kid.clone(), VerifyingKey { algorithm, key: decoding, may_grant_operator, tenant: key.tenant });
        }
        let signing_key = signing.ok_or_else(|| anyhow::anyhow!("JWT signing key {} has no secret", settings.signing_key_id))?;
        let signing_algorithm = verifying
            .get(&settings.signing_key_id)
            .map(|k| k.algorithm)
            .ok_or_else(|| anyhow::anyhow!("JWT signing key {} is not configured", settings.signing_key_id))?;
        Ok(JwtKeys {
            verifying,
            signing_kid: settings.signing_key_id.clone(),
            signing_algorithm,
            signing_key,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            ttl_seconds: settings.ttl_seconds,
            leeway_seconds: settings.leeway_seconds,
        })
    }

    pub fn issue(
        &self,
        subject: &str,
        role: Role,
        tenant_id: Option<TenantId>,
        ttl_seconds: Option<i64>,
    ) -> AppResult<IssuedToken> {
        let now = Utc::now().timestamp();
        let ttl = ttl_seconds.unwrap_or(self.ttl_seconds);
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_owned(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            role,
            tid: tenant_id,
        };
        let mut header = Header::new(self.signing_algorithm);
        header.kid = Some(self.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.signing_key)
            .map_err(|e| AppError::Internal(anyhow::anyhow!("failed to sign JWT: {e}")))?;
        Ok(IssuedToken { access_token: token, token_type: "Bearer".to_owned(), expires_in: ttl })
    }

    /// Verifies signature (with the key named by `kid` and only its algorithm), issuer, audience, expiry and not-before.
    pub fn verify(&self, token: &str) -> AppResult<Claims> {
        let invalid = |why: &str| AppError::Unauthenticated(format!("invalid bearer token: {why}"));
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("malformed"))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.verifying.get(kid).ok_or_else(|| invalid("unknown key id"))?,
            // Without a kid only an unambiguous single key may be used.
            None if self.verifying.len() == 1 => self.verifying.values().next().ok_or_else(|| invalid("no key"))?,
            None => return Err(invalid("missing key id")),
        };
        if header.alg != key.algorithm {
            return Err(invalid("algorithm not allowed for this key"));
        }
        let mut validation = Validation::new(key.algorithm);
        validation.algorithms = vec![key.algorithm];
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway_seconds;
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => invalid("expired"),
                ErrorKind::ImmatureSignature => invalid("not valid yet"),
                ErrorKind::InvalidAudience => invalid("wrong audience"),
                ErrorKind::InvalidIssuer => invalid("wrong issuer"),
                ErrorKind::InvalidSignature => invalid("bad signature"),
                ErrorKind::InvalidAlgorithm => invalid("algorithm not allowed for this key"),
                _ => invalid("rejected"),
            }
        })?;
        let claims = data.claims;
        if claims.role == Role::Operator && !key.may_grant_operator {
            return Err(invalid("this key may not grant the operator role"));
        }
        if key.tenant.is_some_and(|tenant| claims.tid != Some(tenant.into())) {
            return Err(invalid("this key is limited to another tenant"));
        }
        Ok(claims)
    }
}
