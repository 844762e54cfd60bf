//! The loopback ports each agent listens on, distinct from every other agent's.

use super::*;

/// Three distinct free loopback ports (TCP; the Serf port UDP too), none of them in `taken`.
pub fn allocate_ports(taken: &mut HashSet<u16>) -> io::Result<AgentPorts> {
    Ok(AgentPorts {
        http: free_port(taken, false)?,
        server: free_port(taken, false)?,
        serf_lan: free_port(taken, true)?,
    })
}

pub(super) fn free_port(taken: &mut HashSet<u16>, udp: bool) -> io::Result<u16> {
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if taken.contains(&port) || (udp && UdpSocket::bind(("127.0.0.1", port)).is_err()) {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free port in 100 tries",
    ))
}

/// The ports an agent listens on; DNS, gRPC and Serf WAN are disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentPorts {
    pub http: u16,
    pub server: u16,
    pub serf_lan: u16,
}

impl ProcessCloud {
    /// Ports no other agent of this data directory holds: two agents must never share one.
    pub(super) fn taken_ports(&self) -> Result<HashSet<u16>, CloudError> {
        let mut taken = HashSet::new();
        let client = read_record(&self.client_path(), "read the client record")?;
        for r in self.records()?.into_iter().chain(client) {
            if !r.retired {
                taken.extend([r.ports.http, r.ports.server, r.ports.serf_lan]);
            }
        }
        Ok(taken)
    }

    /// Serf LAN ports of the running servers, for `-retry-join`.
    pub(super) fn join_ports(&self) -> Result<Vec<u16>, CloudError> {
        Ok(self
            .records()?
            .iter()
            .filter(|r| !r.retired && self.is_alive(r))
            .map(|r| r.ports.serf_lan)
            .collect())
    }
}
