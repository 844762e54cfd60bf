//! Firing a user event as the agent does: validated, given an ID, size-checked, delivered to
//! the agent's buffer (`store::event`) and the list's readers woken. Events are gossip: firing
//! needs no leader.

use crate::http::ApiError;
use crate::state::State;
use crate::store::event::{Fire, Regex, UserEvent, EVENT_SIZE_LIMIT, EVENT_VERSION};
use crate::watch::{Change, Topic};

/// Fires a user event as the agent does: validates it, gives it an ID and delivers it to the
/// agent's buffer. Returns the event as the fire response shows it (LTime 0). Needs no leader.
pub fn fire(st: &mut State, req: Fire) -> Result<UserEvent, ApiError> {
    if req.name.is_empty() {
        return Err(ApiError::internal("User event missing name"));
    }
    if !req.tag_filter.is_empty() && req.service_filter.is_empty() {
        return Err(ApiError::internal(
            "Cannot provide tag filter without service filter",
        ));
    }
    for (what, filter) in [
        ("node", &req.node_filter),
        ("service", &req.service_filter),
        ("tag", &req.tag_filter),
    ] {
        if !filter.is_empty() {
            Regex::parse(filter).map_err(|e| {
                ApiError::internal(format!("Invalid {what} filter: error parsing regexp: {e}"))
            })?;
        }
    }
    let event = UserEvent {
        id: uuid::Uuid::new_v4().to_string(),
        name: req.name,
        payload: req.payload,
        node_filter: req.node_filter,
        service_filter: req.service_filter,
        tag_filter: req.tag_filter,
        version: EVENT_VERSION,
        ltime: 0,
    };
    // Approximates serf's check on the encoded message: the event (ID, name, payload,
    // filters) in msgpack inside serf's envelope, which repeats the name with a prefix.
    let encoded = 96
        + 2 * event.name.len()
        + event.payload.as_ref().map_or(0, Vec::len)
        + event.node_filter.len()
        + event.service_filter.len()
        + event.tag_filter.len();
    if encoded > EVENT_SIZE_LIMIT {
        return Err(ApiError::internal(format!(
            "encoded user event exceeds configured limit of {EVENT_SIZE_LIMIT} bytes after encoding"
        )));
    }
    let agent_node = st.config.agent_node.clone();
    if st.events.deliver(event.clone(), &agent_node) {
        st.notify(Change::table(Topic::Events));
    }
    Ok(event)
}
