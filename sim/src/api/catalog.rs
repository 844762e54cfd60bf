//! TODO(helper B2): /v1/catalog endpoints.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}

#[derive(Default)]
pub struct Catalog {}
