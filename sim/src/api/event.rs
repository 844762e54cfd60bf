//! TODO(helper B1): /v1/event endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}

#[derive(Default)]
pub struct Events {}
