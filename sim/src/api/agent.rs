//! TODO(helper B2): /v1/agent endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}
