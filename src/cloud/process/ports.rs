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

/// The lowest port an agent is given: above the well-known and registered services most hosts
/// run.
const LOWEST: u16 = 10_000;

/// The first port the kernel hands out on its own (`ip_local_port_range`), for connections'
/// source ports and binds to port 0; Linux's default where it cannot be read.
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .filter(|start| *start > LOWEST + 1000)
        .unwrap_or(32_768)
}

/// A free loopback port below the kernel's ephemeral range, not in `taken`. A port the kernel
/// picked (a bind to port 0) is free only until the kernel picks it again, for the source
/// port of any process's next outgoing connection: an agent then loses it between our choice
/// and its own bind, and exits. Below the range, only a process binding that very port can
/// take it (Consul's own test harness, `sdk/freeport`, chooses from there for this reason).
pub(super) fn free_port(taken: &mut HashSet<u16>, udp: bool) -> io::Result<u16> {
    use rand::Rng as _;
    let end = ephemeral_start();
    let mut rng = rand::thread_rng();
    for _ in 0..200 {
        let port = rng.gen_range(LOWEST..end);
        if taken.contains(&port)
            || TcpListener::bind(("127.0.0.1", port)).is_err()
            || (udp && UdpSocket::bind(("127.0.0.1", port)).is_err())
        {
            continue;
        }
        taken.insert(port);
        return Ok(port);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        format!("no free port in {LOWEST}..{end} in 200 tries"),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn agents_get_distinct_free_ports_below_the_ephemeral_range() {
        let end = ephemeral_start();
        let mut taken = HashSet::new();
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let p = allocate_ports(&mut taken).unwrap();
            for port in [p.http, p.server, p.serf_lan] {
                assert!(
                    (LOWEST..end).contains(&port),
                    "{port} outside {LOWEST}..{end}"
                );
                assert!(seen.insert(port), "{port} given twice");
                assert!(
                    TcpListener::bind(("127.0.0.1", port)).is_ok(),
                    "{port} is taken"
                );
            }
        }
        assert_eq!(taken, seen);
    }

    #[test]
    fn with_every_port_taken_the_error_names_the_range() {
        let end = ephemeral_start();
        let mut taken: HashSet<u16> = (LOWEST..end).collect();
        let e = free_port(&mut taken, true).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert!(
            e.to_string()
                .contains(&format!("no free port in {LOWEST}..{end}")),
            "{e}"
        );
    }
}
