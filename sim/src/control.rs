//! TODO(helper B2): the `/sim/...` control API.

use actix_web::web;

pub fn configure(_cfg: &mut web::ServiceConfig) {}
