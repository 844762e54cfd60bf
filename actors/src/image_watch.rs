//! The `image` watch: polls the cloud's newest image (`CloudPort::newest_image`) every
//! `interval` and hands each answer to the Watcher as a read, like a blocking query that
//! answers on a timer. The Watcher's `watch_plan::Memory` decides what fires (the first poll is
//! the baseline; a different image is a change).
//!
//! Every replica polls, so every replica sees a new image: its trigger is named after the image
//! (`trigger_id`), not after anything local to the replica, which makes the Dispatcher's
//! receipts run it once cluster-wide.
//!
//! The watch only moves forward (`forward`): when the newest image is deregistered and an
//! older one becomes the newest again, or none matches any more, it keeps showing the newest
//! it has seen, so withdrawing a bad image never starts a rollout back onto the old one. That
//! stays an operator's decision (`consul-rehydrate`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::ports::{CloudPort, Image, PortFuture, WatchRead, WatchStream};

/// The payload field that holds the image ID; `trigger_id` reads it back.
const ID: &str = "ImageID";

/// Polls the cloud for the newest image.
pub struct ImagePoll {
    cloud: Rc<dyn CloudPort>,
    interval: Duration,
    started: Cell<bool>,
    /// The newest image seen so far.
    seen: Rc<RefCell<Option<Image>>>,
}

impl ImagePoll {
    pub fn new(cloud: Rc<dyn CloudPort>, interval: Duration) -> Self {
        Self {
            cloud,
            interval,
            started: Cell::new(false),
            seen: Rc::new(RefCell::new(None)),
        }
    }
}

impl WatchStream for ImagePoll {
    /// The first poll answers at once (the baseline); each later one waits `interval` first,
    /// which also paces the retries after a failed poll.
    fn next(&self) -> PortFuture<WatchRead> {
        let first = !self.started.replace(true);
        let (cloud, interval, seen) = (self.cloud.clone(), self.interval, self.seen.clone());
        Box::pin(async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let polled = cloud.newest_image().await?;
            let shown = forward(seen.borrow().as_ref(), polled);
            seen.replace(shown.clone());
            Ok(read(shown.as_ref()))
        })
    }
}

/// What the watch shows after a poll: the polled image if it is at least as new as the newest
/// seen (by creation date, then name, then ID: the cloud's own rule), else the newest seen.
pub fn forward(seen: Option<&Image>, polled: Option<Image>) -> Option<Image> {
    let key = |i: &Image| {
        (
            i.created.parse::<jiff::Timestamp>().ok(),
            i.name.clone(),
            i.id.clone(),
        )
    };
    match (seen, polled) {
        (Some(s), Some(p)) if key(&p) < key(s) => Some(s.clone()),
        (Some(s), None) => Some(s.clone()),
        (_, p) => p,
    }
}

/// A poll's answer as a watch read: the image (null when none matches the filter), and an
/// index that moves exactly when the image does.
pub fn read(image: Option<&Image>) -> WatchRead {
    match image {
        Some(i) => WatchRead {
            index: fnv1a(&i.id).max(1),
            payload: json!({ ID: i.id, "Name": i.name, "Created": i.created }),
        },
        None => WatchRead {
            index: 1,
            payload: Value::Null,
        },
    }
}

/// A poll's image's position among the watch's triggers: its creation time in Unix ms (the
/// watch only moves forward, to newer images).
pub fn position(payload: &Value) -> Option<u64> {
    let created = payload.get("Created")?.as_str()?;
    let ms = created.parse::<jiff::Timestamp>().ok()?.as_millisecond();
    u64::try_from(ms).ok()
}

/// The trigger a poll showing this image fires: the same on every replica, and usable as the
/// last segment of a receipt's KV key (an image ID with other characters than letters, digits,
/// '-', '_' and '.' keeps them out, with a hash of the whole ID so two IDs never share it).
/// None when no image matches: nothing to roll onto.
pub fn trigger_id(payload: &Value) -> Option<String> {
    let id = payload.get(ID)?.as_str()?;
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    Some(if safe == id {
        format!("image-{id}")
    } else {
        format!("image-{safe}-{:016x}", fnv1a(id))
    })
}

/// FNV-1a: a hash every replica computes the same, whatever its Rust version (std's
/// `DefaultHasher` promises no such thing).
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::watch_plan::{Memory, Naming};

    fn image(id: &str) -> Image {
        Image {
            id: id.into(),
            name: format!("consul-{id}"),
            created: "2026-11-24T00:00:00.000Z".into(),
        }
    }

    /// Two replicas that took their baselines at different times still name a new image's
    /// trigger the same, so the Dispatcher's receipt runs it once.
    #[test]
    fn every_replica_names_a_new_image_the_same() {
        let (mut a, mut b) = (Memory::default(), Memory::default());
        let old = read(Some(&image("ami-1")));
        let new = read(Some(&image("ami-2")));
        assert!(a
            .observe_as(Naming::Image, old.index, &old.payload)
            .is_empty());
        // b polled a few more times before the image changed: same content, no fire.
        assert!(b
            .observe_as(Naming::Image, old.index, &old.payload)
            .is_empty());
        assert!(b
            .observe_as(Naming::Image, old.index, &old.payload)
            .is_empty());
        let fa = a.observe_as(Naming::Image, new.index, &new.payload);
        let fb = b.observe_as(Naming::Image, new.index, &new.payload);
        assert_eq!(fa.len(), 1);
        assert_eq!(fa, fb);
        assert_eq!(fa[0].trigger_id, "image-ami-2");
        assert_eq!(fa[0].payload["ImageID"], "ami-2");
        // Polling the same image again fires nothing more.
        assert!(a
            .observe_as(Naming::Image, new.index, &new.payload)
            .is_empty());
    }

    #[test]
    fn a_baseline_never_fires_and_no_image_is_no_trigger() {
        let mut m = Memory::default();
        let first = read(Some(&image("ami-1")));
        assert!(m
            .observe_as(Naming::Image, first.index, &first.payload)
            .is_empty());
        // The filter matching nothing any more: a change, but nothing to roll onto.
        let none = read(None);
        assert!(m
            .observe_as(Naming::Image, none.index, &none.payload)
            .is_empty());
        let back = read(Some(&image("ami-3")));
        let fired = m.observe_as(Naming::Image, back.index, &back.payload);
        assert_eq!(fired[0].trigger_id, "image-ami-3");
    }

    #[test]
    fn the_watch_only_moves_forward() {
        let at = |id: &str, created: &str| Image {
            id: id.into(),
            name: "consul".into(),
            created: created.into(),
        };
        let (a, b) = (
            at("ami-a", "2026-11-01T00:00:00.000Z"),
            at("ami-b", "2026-11-20T00:00:00.000Z"),
        );
        assert_eq!(forward(None, Some(a.clone())), Some(a.clone()));
        assert_eq!(forward(Some(&a), Some(b.clone())), Some(b.clone()));
        // b withdrawn: a is the newest again, but the watch keeps showing b (no fire).
        assert_eq!(forward(Some(&b), Some(a.clone())), Some(b.clone()));
        // Nothing matches any more: still b.
        assert_eq!(forward(Some(&b), None), Some(b.clone()));
        // Nothing ever matched: nothing.
        assert_eq!(forward(None, None), None);
        // A newer one still comes through.
        let c = at("ami-c", "2026-11-24T00:00:00.000Z");
        assert_eq!(forward(Some(&b), Some(c.clone())), Some(c));
    }

    #[test]
    fn image_ids_become_safe_key_segments() {
        let id = |s: &str| trigger_id(&json!({ "ImageID": s })).unwrap();
        assert_eq!(id("image-b"), "image-image-b");
        let odd = id("registry/consul:1.20");
        assert!(odd.starts_with("image-registry_consul_1.20-"), "{odd}");
        assert!(!odd.contains('/'));
        assert_ne!(odd, id("registry_consul:1.20"));
        assert_eq!(trigger_id(&Value::Null), None);
    }
}
