//! `/v1/acl`: what the client's own token is, read without changing anything. For
//! `rehydrator doctor`, which tells an operator before a rollout whether the token can make
//! every call rehydrator makes.
//!
//! The token's secret is never decoded from the answer (`AclToken` has no field for it), so it
//! cannot reach a log or a report.

use awc::http::StatusCode;
use serde::Deserialize;

use super::{Call, Client, ConsulError};

/// The ID of Consul's built-in `global-management` policy: a token with it may do anything.
pub const GLOBAL_MANAGEMENT: &str = "00000000-0000-0000-0000-000000000001";

/// A policy or role a token is linked to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclLink {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
}

/// A service identity of a token: `service:write` on that service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclServiceIdentity {
    pub service_name: String,
}

/// `/v1/acl/token/self` without its secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AclToken {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    pub description: String,
    #[serde(deserialize_with = "super::types::null_as_default")]
    pub policies: Vec<AclLink>,
    #[serde(deserialize_with = "super::types::null_as_default")]
    pub roles: Vec<AclLink>,
    #[serde(deserialize_with = "super::types::null_as_default")]
    pub service_identities: Vec<AclServiceIdentity>,
}

impl AclToken {
    /// Linked to `global-management` (Consul's bootstrap and master tokens are).
    pub fn is_management(&self) -> bool {
        self.policies.iter().any(|p| p.id == GLOBAL_MANAGEMENT)
    }
}

/// What the agent says of the client's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelf {
    /// ACLs are off: every call is allowed (Consul answers 401 "ACL support disabled").
    Disabled,
    Token(AclToken),
}

impl Client {
    /// The client's own token; `TokenSelf::Disabled` where ACLs are off. A token Consul does
    /// not know is a 403 error ("ACL not found").
    pub async fn acl_token_self(&self) -> Result<TokenSelf, ConsulError> {
        let answer = self.send(Call::get("acl/token/self"), None).await?;
        if answer.status == StatusCode::UNAUTHORIZED
            && String::from_utf8_lossy(&answer.body).contains("ACL support disabled")
        {
            return Ok(TokenSelf::Disabled);
        }
        answer.ok()?.json().map(TokenSelf::Token)
    }

    /// Whether the client's token may read the policy `id` (it needs `acl = "read"`, which
    /// `acl = "write"`, and so snapshots, imply). `Ok(false)` on 403.
    pub async fn acl_policy_readable(&self, id: &str) -> Result<bool, ConsulError> {
        let call = Call::get(format!("acl/policy/{}", super::segment(id)));
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::FORBIDDEN {
            return Ok(false);
        }
        answer.ok().map(|_| true)
    }
}
