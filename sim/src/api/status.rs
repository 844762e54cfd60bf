//! TODO(helper B2): /v1/status endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}
