//! TODO(helper B1): /v1/session endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}

#[derive(Default)]
pub struct Sessions {}
