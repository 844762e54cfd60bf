//! `/v1/kv`: the KV store, where rehydrator keeps its locks, receipts, rollout and pause keys.
//!
//! The LockManager acquires and releases with `kv_put` (`acquire`/`release`) and waits on keys
//! with blocking `kv_get`; the Dispatcher reads and writes receipts.

use awc::http::{Method, StatusCode};

use super::{
    key_path, Body, Call, Client, ConsulError, Indexed, KvPair, QueryOptions, MAX_LIST_BODY,
};

/// Options of `kv_put`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvPutOptions {
    /// An opaque number stored with the key.
    pub flags: Option<u64>,
    /// Write only if the key's `ModifyIndex` is this (0: only if the key does not exist).
    pub cas: Option<u64>,
    /// Write and take the key's lock for this session, if no other session holds it.
    pub acquire: Option<String>,
    /// Write and give up the key's lock held by this session.
    pub release: Option<String>,
}

/// Options of `kv_delete`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KvDeleteOptions {
    /// Delete every key under the prefix.
    pub recurse: bool,
    /// Delete only if the key's `ModifyIndex` is this.
    pub cas: Option<u64>,
}

impl Client {
    /// The key, or `None` if it does not exist. The meta is there either way: Consul sends
    /// `X-Consul-Index` with its 404, so a watcher can block until the key appears.
    pub async fn kv_get(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<KvPair>>, ConsulError> {
        let call = Call::get(format!("kv/{}", key_path(key))).options(opts);
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: None,
                meta: answer.meta,
            });
        }
        Ok(answer
            .indexed::<Vec<KvPair>>()?
            .map(|pairs| pairs.into_iter().next()))
    }

    /// Every key under `prefix` with its value (`?recurse`); empty when there is none.
    pub async fn kv_list(
        &self,
        prefix: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<KvPair>>, ConsulError> {
        let call = Call::get(format!("kv/{}", key_path(prefix)))
            .flag("recurse", true)
            .limit(MAX_LIST_BODY)
            .options(opts);
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                meta: answer.meta,
            });
        }
        answer.indexed()
    }

    /// The key names under `prefix` (`?keys`), cut after `separator` when given, as Consul
    /// lists "folders" (`a/b/` for `a/b/c` with separator `/`).
    pub async fn kv_keys(
        &self,
        prefix: &str,
        separator: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<String>>, ConsulError> {
        let call = Call::get(format!("kv/{}", key_path(prefix)))
            .flag("keys", true)
            .param_opt("separator", separator)
            .limit(MAX_LIST_BODY)
            .options(opts);
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: Vec::new(),
                meta: answer.meta,
            });
        }
        answer.indexed()
    }

    /// The key's value as stored (`?raw`), or `None` if the key does not exist.
    pub async fn kv_get_raw(
        &self,
        key: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<Vec<u8>>>, ConsulError> {
        let call = Call::get(format!("kv/{}", key_path(key)))
            .flag("raw", true)
            .options(opts);
        let answer = self.send(call, None).await?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(Indexed {
                value: None,
                meta: answer.meta,
            });
        }
        let answer = answer.ok()?;
        Ok(Indexed {
            value: Some(answer.body),
            meta: answer.meta,
        })
    }

    /// Writes the key. `false` means a condition failed: the `cas` index did not match, or the
    /// lock is held by another session (or in its lock-delay).
    pub async fn kv_put(
        &self,
        key: &str,
        value: &[u8],
        opts: &KvPutOptions,
    ) -> Result<bool, ConsulError> {
        let call = Call::put(format!("kv/{}", key_path(key)))
            .param_opt("flags", opts.flags)
            .param_opt("cas", opts.cas)
            .param_opt("acquire", opts.acquire.as_deref())
            .param_opt("release", opts.release.as_deref());
        self.send(call, Some(Body::Raw(value.to_vec())))
            .await?
            .bool()
    }

    /// Takes the key's lock for `session`, writing `value`. `false`: someone else holds it.
    pub async fn kv_acquire(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        let opts = KvPutOptions {
            acquire: Some(session.to_owned()),
            ..KvPutOptions::default()
        };
        self.kv_put(key, value, &opts).await
    }

    /// Gives up the key's lock held by `session`, writing `value`.
    pub async fn kv_release(
        &self,
        key: &str,
        value: &[u8],
        session: &str,
    ) -> Result<bool, ConsulError> {
        let opts = KvPutOptions {
            release: Some(session.to_owned()),
            ..KvPutOptions::default()
        };
        self.kv_put(key, value, &opts).await
    }

    /// Deletes the key (or the prefix, with `recurse`). `false` means the `cas` did not match.
    pub async fn kv_delete(&self, key: &str, opts: &KvDeleteOptions) -> Result<bool, ConsulError> {
        let call = Call::new(Method::DELETE, format!("kv/{}", key_path(key)))
            .flag("recurse", opts.recurse)
            .param_opt("cas", opts.cas);
        self.send(call, None).await?.bool()
    }
}
