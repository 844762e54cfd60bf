//! The simulated cloud's image registry: the machine images `POST /sim/servers` may launch from
//! and that a cloud backend's "newest image" reads through `GET /sim/images` (the simulator's
//! DescribeImages). An image can be `broken`: a server launched from it boots and joins, but
//! autopilot never sees it healthy, so it is never promoted (see `cluster::Server::healthy`).
//!
//! Who talks to it: `cluster::bootstrap` registers the configured image, `cluster` looks up
//! whether a launched image is broken, and `control.rs` lists and registers images.

use std::time::SystemTime;

use serde::Serialize;

/// One machine image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// What a launch names (the AMI ID of the simulated cloud).
    pub id: String,
    pub name: String,
    pub created: SystemTime,
    /// Servers launched from it never become healthy.
    pub broken: bool,
    /// Servers launched from it never boot: each machine is terminated, with this reason (an
    /// EC2 StateReason), when its boot would end.
    pub boot_failure: Option<String>,
}

/// An image as the control API shows it; `created` in EC2's `CreationDate` format
/// (RFC 3339, UTC, milliseconds), so equal-width strings also sort by time.
#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub id: String,
    pub name: String,
    pub created: String,
    pub broken: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_failure: Option<String>,
}

impl From<&Image> for ImageView {
    fn from(i: &Image) -> Self {
        Self {
            id: i.id.clone(),
            name: i.name.clone(),
            created: format_created(i.created),
            broken: i.broken,
            boot_failure: i.boot_failure.clone(),
        }
    }
}

/// Registering an image whose ID is taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an image with id {0:?} already exists")]
pub struct ImageExists(pub String);

/// The registered images, in registration order.
#[derive(Debug, Default)]
pub struct Images {
    list: Vec<Image>,
}

impl Images {
    pub fn get(&self, id: &str) -> Option<&Image> {
        self.list.iter().find(|i| i.id == id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Image> {
        self.list.iter()
    }

    /// Adds `image`; IDs are unique, as AMI IDs are.
    pub fn register(&mut self, image: Image) -> Result<&Image, ImageExists> {
        if self.get(&image.id).is_some() {
            return Err(ImageExists(image.id));
        }
        self.list.push(image);
        Ok(&self.list[self.list.len() - 1])
    }

    /// Whether servers launched from `id` never get healthy (an unknown image is not broken:
    /// the control API refuses unknown images before it gets here).
    pub fn is_broken(&self, id: &str) -> bool {
        self.get(id).is_some_and(|i| i.broken)
    }

    /// Why servers launched from `id` fail at boot, if they do.
    pub fn boot_failure(&self, id: &str) -> Option<String> {
        self.get(id).and_then(|i| i.boot_failure.clone())
    }
}

/// `created` as the control API writes it: `2024-05-01T12:00:00.000Z`.
pub fn format_created(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Reads a `created` given to `POST /sim/images`: RFC 3339 in UTC (`Z` or `+00:00`), any
/// fraction of a second.
pub fn parse_created(s: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(s)
        .map_err(|e| format!("created {s:?} is not an RFC 3339 UTC time: {e}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn image(id: &str) -> Image {
        Image {
            id: id.into(),
            name: id.into(),
            created: SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800),
            broken: false,
            boot_failure: None,
        }
    }

    #[test]
    fn ids_are_unique() {
        let mut images = Images::default();
        images.register(image("a")).unwrap();
        assert_eq!(images.register(image("a")), Err(ImageExists("a".into())));
        images
            .register(Image {
                broken: true,
                ..image("b")
            })
            .unwrap();
        assert!(images.is_broken("b"));
        assert!(!images.is_broken("a"));
        assert!(!images.is_broken("nope"));
        assert_eq!(images.iter().count(), 2);
    }

    #[test]
    fn created_round_trips_in_ec2s_format() {
        let t = image("a").created + Duration::from_millis(250);
        let s = format_created(t);
        assert_eq!(s, "2024-05-01T12:00:00.250Z");
        assert_eq!(parse_created(&s).unwrap(), t);
        assert_eq!(
            parse_created("2024-05-01T12:00:00Z").unwrap(),
            image("a").created
        );
        assert!(parse_created("2024-05-01T12:00:00+02:00").is_err());
        assert!(parse_created("yesterday").is_err());
    }
}
