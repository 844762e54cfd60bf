//! The rollout's safety net: a Consul snapshot before its first step and before each
//! retirement (`rollout.snapshot_dir`), so that a cluster a step broke can be put back with
//! `consul snapshot restore <file>`. Each archive is named
//! `<cluster>-<rollout>-<step>-<unix ms>.snap`; past `rollout.snapshots_kept` of this cluster's
//! archives, the oldest go. The names land in the rollout record, newest last.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rehydrator_config::{SnapshotDest, SnapshotSettings};
use tracing::{info, warn};

use crate::plan::Rollout;
use crate::ports::{ConsulPort, ObjectStore};
use crate::receipt::now_ms;

/// Snapshot names a record keeps (the directory may keep more).
pub const KEPT_IN_RECORD: usize = 8;
/// The most of a step label (a node name, from Consul) a file name takes.
const MAX_LABEL: usize = 64;

/// Saves a snapshot for `step` of rollout `r` of `cluster` where the settings say (a
/// directory, or through `objects` to S3) and prunes the old ones; answers the archive's
/// name, or why there is none.
pub async fn save(
    consul: &dyn ConsulPort,
    objects: Option<&dyn ObjectStore>,
    settings: &SnapshotSettings,
    cluster: &str,
    r: &Rollout,
    step: &str,
) -> Result<String, String> {
    let label = crate::receipt::safe_segment(step, MAX_LABEL);
    let name = format!("{cluster}-{}-{label}-{}.snap", r.id, now_ms());
    let max = usize::try_from(settings.max_mib.get())
        .unwrap_or(usize::MAX)
        .saturating_mul(1 << 20);
    let kept = settings.kept.get() as usize;
    match &settings.dest {
        SnapshotDest::Dir(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| {
                format!(
                    "cannot create the snapshot directory {}: {e}",
                    dir.display()
                )
            })?;
            let bytes = consul
                .snapshot(&dir.join(&name), max)
                .await
                .map_err(|e| format!("the snapshot before {step} failed: {e}"))?;
            info!(snapshot = %name, bytes, dir = %dir.display(), "Saved a Consul snapshot.");
            if let Err(e) = prune(dir, cluster, kept) {
                warn!(error = %e, dir = %dir.display(), "Could not prune old snapshots.");
            }
        }
        SnapshotDest::S3 { bucket, prefix } => {
            let Some(store) = objects else {
                return Err(format!(
                    "the snapshot before {step}: no S3 client for s3://{bucket}/{prefix}"
                ));
            };
            // Through a file of its own (an archive can be hundreds of MiB): written whole,
            // uploaded, removed whatever the upload did.
            let file = scratch_file(&name);
            if let Some(scratch) = file.parent() {
                std::fs::create_dir_all(scratch).map_err(|e| {
                    format!("cannot create {} for the snapshot: {e}", scratch.display())
                })?;
            }
            let taken = consul.snapshot(&file, max).await;
            let bytes = match taken {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = std::fs::remove_file(&file);
                    return Err(format!("the snapshot before {step} failed: {e}"));
                }
            };
            let key = format!("{prefix}{name}");
            let put = store.put_file(&key, &file).await;
            let _ = std::fs::remove_file(&file);
            put.map_err(|e| {
                format!(
                    "the snapshot before {step} could not be stored at s3://{bucket}/{key}: {e}"
                )
            })?;
            info!(snapshot = %name, bytes, bucket = %bucket, key = %key, "Saved a Consul snapshot to S3.");
            if let Err(e) = prune_objects(store, &format!("{prefix}{cluster}-"), kept).await {
                warn!(error = %e, bucket = %bucket, "Could not prune old snapshots.");
            }
        }
    }
    Ok(name)
}

/// Where an archive bound for S3 waits for its upload. The name alone is not enough: two
/// saves within one millisecond (two replicas or two test rigs on one host, one temp
/// directory) would share a file, and one's clean-up would pull it from under the other's
/// upload. The process id and a count of this process's saves set each apart.
fn scratch_file(name: &str) -> PathBuf {
    static SAVES: AtomicU64 = AtomicU64::new(0);
    let n = SAVES.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir()
        .join("rehydrator-snapshots")
        .join(format!("{}-{n}-{name}", std::process::id()))
}

/// Deletes all but the newest `kept` of the archives whose keys start with `prefix` (the
/// cluster's), oldest first as the store lists them.
async fn prune_objects(store: &dyn ObjectStore, prefix: &str, kept: usize) -> Result<(), String> {
    let mut ours: Vec<(u64, String)> = store
        .list(prefix)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|k| k.ends_with(".snap"))
        .map(|k| (taken_at(&k).unwrap_or(0), k))
        .collect();
    // By the time in the name, not the store's: S3 keeps modification times to the second,
    // and two steps' snapshots within a second would sort by name.
    ours.sort();
    let over = ours.len().saturating_sub(kept);
    for (_, key) in ours.into_iter().take(over) {
        store.delete(&key).await.map_err(|e| e.to_string())?;
        info!(snapshot = %key, "Deleted an old snapshot.");
    }
    Ok(())
}

/// When an archive was taken, from its name's `-<unix ms>.snap` ending.
fn taken_at(name: &str) -> Option<u64> {
    name.strip_suffix(".snap")?.rsplit('-').next()?.parse().ok()
}

/// Records `name` in `r`, keeping the newest `KEPT_IN_RECORD`.
pub fn record(r: &mut Rollout, name: String) {
    r.snapshots.push(name);
    let over = r.snapshots.len().saturating_sub(KEPT_IN_RECORD);
    r.snapshots.drain(..over);
}

/// Deletes all but the newest `kept` of `cluster`'s archives in `dir` (by modification time,
/// then name).
fn prune(dir: &Path, cluster: &str, kept: usize) -> std::io::Result<()> {
    let prefix = format!("{cluster}-");
    let mut ours = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) && name.ends_with(".snap") {
            let modified = entry.metadata()?.modified()?;
            ours.push((modified, name));
        }
    }
    ours.sort();
    let over = ours.len().saturating_sub(kept);
    for (_, name) in ours.into_iter().take(over) {
        std::fs::remove_file(dir.join(&name))?;
        info!(snapshot = %name, "Deleted an old snapshot.");
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pruning_keeps_the_newest_of_this_clusters_archives_only() {
        let dir = std::env::temp_dir().join(format!("rehydrator-prune-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let names = [
            "prod-r1-start-1.snap",
            "prod-r1-retire-2.snap",
            "prod-r1-retire-3.snap",
        ];
        for (i, name) in names.iter().enumerate() {
            let f = std::fs::File::create(dir.join(name)).unwrap();
            // Modification times a second apart, oldest first.
            f.set_modified(base + std::time::Duration::from_secs(i as u64))
                .unwrap();
        }
        std::fs::write(dir.join("stage-r9-start-1.snap"), b"x").unwrap();
        std::fs::write(dir.join("prod-notes.txt"), b"x").unwrap();
        prune(&dir, "prod", 2).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "prod-notes.txt",
                "prod-r1-retire-2.snap",
                "prod-r1-retire-3.snap",
                "stage-r9-start-1.snap"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn two_saves_of_one_name_wait_in_files_of_their_own() {
        // What a CI run met: two rigs saved `snap-r1-retire-s1-<same ms>.snap` at once,
        // and the first to finish removed the file the other was still uploading.
        let name = "snap-r1-retire-s1-1796413556089.snap";
        let (a, b) = (scratch_file(name), scratch_file(name));
        assert_ne!(a, b);
        for f in [&a, &b] {
            let file = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(file.ends_with(name), "{file}");
            assert!(
                file.starts_with(&format!("{}-", std::process::id())),
                "{file}"
            );
        }
    }

    #[test]
    fn an_archive_is_dated_by_its_name() {
        assert_eq!(
            taken_at("prod/snap-r1-retire-s1-1796389457529.snap"),
            Some(1796389457529)
        );
        assert_eq!(taken_at("prod/other.snap"), None);
        assert_eq!(taken_at("x-12"), None);
    }

    #[test]
    fn the_record_keeps_the_newest_names() {
        let mut r = Rollout::start("r1".into(), "b", 0, 1);
        for i in 0..(KEPT_IN_RECORD + 3) {
            record(&mut r, format!("s{i}"));
        }
        assert_eq!(r.snapshots.len(), KEPT_IN_RECORD);
        assert_eq!(r.snapshots.first().map(String::as_str), Some("s3"));
        assert_eq!(
            r.snapshots.last().map(String::as_str),
            Some(format!("s{}", KEPT_IN_RECORD + 2).as_str())
        );
    }
}
