//! `/v1/health`: service instances with their checks, and checks by service, state or node.
//! Executors use it to tell whether a new server's agent and `serfHealth` are passing.

use super::{
    segment, Call, CheckState, Client, ConsulError, HealthCheck, Indexed, QueryOptions,
    ServiceEntry, MAX_LIST_BODY,
};

impl Client {
    /// The instances of service `name` with their node and checks; with `passing`, only those
    /// whose every check passes.
    pub async fn health_service(
        &self,
        name: &str,
        tag: Option<&str>,
        passing: bool,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<ServiceEntry>>, ConsulError> {
        let call = Call::get(format!("health/service/{}", segment(name)))
            .param_opt("tag", tag)
            .flag("passing", passing)
            .limit(MAX_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<Vec<ServiceEntry>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// The checks of every instance of service `name`.
    pub async fn health_checks(
        &self,
        service: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ConsulError> {
        let call = Call::get(format!("health/checks/{}", segment(service))).options(opts);
        let found: Indexed<Option<Vec<HealthCheck>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// The checks in `state` (`Any` for all).
    pub async fn health_state(
        &self,
        state: CheckState,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ConsulError> {
        let call = Call::get(format!("health/state/{}", state.as_str()))
            .limit(MAX_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<Vec<HealthCheck>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// The checks on `node`, its `serfHealth` among them.
    pub async fn health_node(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<HealthCheck>>, ConsulError> {
        let call = Call::get(format!("health/node/{}", segment(node))).options(opts);
        let found: Indexed<Option<Vec<HealthCheck>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }
}
