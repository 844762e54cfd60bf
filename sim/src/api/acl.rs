//! Consul's `/v1/acl/...` endpoints, as an agent with ACLs off answers them: the simulator
//! has no ACL system, so every call is allowed and these say so.
//!
//! Who asks: `rehydrator doctor`, reading its token (`/v1/acl/token/self`) to tell which calls
//! it may make. Consul's ACL handlers first check that ACLs are on (agent/acl_endpoint.go
//! `checkACLDisabled`) and answer 401 "ACL support disabled" otherwise, whatever the call.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};

use crate::http::ApiError;

/// Registers `/v1/acl/...`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/acl/{tail:.*}", web::route().to(disabled));
}

/// Any ACL call: 401 "ACL support disabled".
async fn disabled(_req: HttpRequest) -> Result<&'static str, ApiError> {
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "ACL support disabled",
    ))
}
