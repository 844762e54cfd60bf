//! The first servers (`-bootstrap-expect`) and the client agent replicas talk to: what
//! `rehydrator process-cluster` starts.

use super::*;

/// The leader's address once the cluster `client` reaches can serve replicas: a leader,
/// `servers` voters, and the client agent's own node in the catalog (until its first sync
/// registers it, a session made through it fails with "Missing node registration").
pub async fn ready(client: &crate::consul::Client, servers: usize) -> Option<String> {
    let opts = crate::consul::QueryOptions::default();
    let leader = client.status_leader().await.ok().flatten()?;
    let voters = client.raft_configuration(&opts).await.ok()?.voters();
    let node = client.catalog_node(CLIENT_NODE, &opts).await.ok()?;
    (voters == servers && node.value.is_some()).then_some(leader)
}

impl ProcessCloud {
    /// Starts the first `n` servers on `image`, expecting each other (`-bootstrap-expect`).
    /// Refused while any server of this data directory still runs.
    pub fn bootstrap(&self, n: usize, image: &str) -> Result<Vec<Machine>, CloudError> {
        let request = format!("bootstrap {n} servers on {image}");
        if n == 0 {
            return Err(CloudError::Refused {
                request,
                reason: "a cluster needs at least one server".into(),
            });
        }
        let binary = self.image_binary(image, &request)?;
        let running = self.live_machines()?;
        if !running.is_empty() {
            return Err(CloudError::Refused {
                request,
                reason: format!(
                    "{} server(s) of {} still run; stop them first",
                    running.len(),
                    self.data_dir().display()
                ),
            });
        }
        let mut taken = self.taken_ports()?;
        let stamp = now_ms();
        let mut records = Vec::new();
        for i in 0..n {
            let token = format!("bootstrap-{stamp}-{i}");
            let ports = allocate_ports(&mut taken).map_err(|e| CloudError::Local {
                request: request.clone(),
                reason: format!("no free loopback port: {e}"),
            })?;
            records.push(Record {
                id: machine_id(&token),
                image: image.to_owned(),
                token,
                launched_at: stamp,
                pid: None,
                ports,
                binary: binary.clone(),
                retired: false,
            });
        }
        let mut machines = Vec::new();
        for record in &records {
            let path = self.record_path(&record.id);
            if !create_exclusive(&path, record).map_err(|e| local(&request, &path, e))? {
                return Err(CloudError::Refused {
                    request,
                    reason: format!("{} exists already", path.display()),
                });
            }
            let join: Vec<u16> = records
                .iter()
                .filter(|r| r.id != record.id)
                .map(|r| r.ports.serf_lan)
                .collect();
            let args = server_args(record, &self.agent_data_dir(&record.id), &join, Some(n));
            let started = self.spawn_recorded(record.clone(), &path, args, &request)?;
            tracing::info!(
                machine = %started.id,
                image,
                pid = ?started.pid,
                http = started.ports.http,
                "Started a bootstrap server process.",
            );
            machines.push(self.machine(&started));
        }
        Ok(machines)
    }

    /// Starts the client agent replicas talk to, on `http_port` (0: any free port), joined to
    /// the running servers; answers the running one if there is one. Returns its HTTP port.
    /// An agent that died comes back on the ports it had, as a restarted host's agent does:
    /// under its old node name on a new gossip port, Consul would turn it away until its
    /// dead-node reclaim time (30 s) ran out, and the replicas could make no session meanwhile.
    pub fn start_client(&self, http_port: u16) -> Result<u16, CloudError> {
        let request = "start the client agent".to_owned();
        let path = self.client_path();
        let previous = match read_record(&path, &request)? {
            Some(existing) if !existing.retired && self.is_alive(&existing) => {
                return Ok(existing.ports.http);
            }
            Some(existing) => {
                let _ = fs::remove_file(&path);
                Some(existing.ports)
            }
            None => None,
        };
        let join = self.join_ports()?;
        let mut ports = match previous {
            Some(ports) => ports,
            None => allocate_ports(&mut self.taken_ports()?).map_err(|e| CloudError::Local {
                request: request.clone(),
                reason: format!("no free loopback port: {e}"),
            })?,
        };
        if http_port != 0 {
            ports.http = http_port;
        }
        let record = Record {
            id: CLIENT_NODE.to_owned(),
            image: String::new(),
            token: "client".to_owned(),
            launched_at: now_ms(),
            pid: None,
            ports,
            binary: self.inner.options.consul_bin.clone(),
            retired: false,
        };
        if !create_exclusive(&path, &record).map_err(|e| local(&request, &path, e))? {
            return Err(CloudError::Refused {
                request,
                reason: format!("{} is being started by another process", path.display()),
            });
        }
        let args = client_args(&record, &self.agent_data_dir_of(&path), &join);
        let record = self.spawn_recorded(record, &path, args, &request)?;
        tracing::info!(pid = ?record.pid, http = record.ports.http, "Started the client agent.");
        Ok(record.ports.http)
    }
}
