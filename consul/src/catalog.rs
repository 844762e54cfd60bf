//! `/v1/catalog`: the registry of nodes and services. The servers watch (`service` and `nodes`
//! watches) reads it; the simulated cloud and tests register into it.

use std::collections::BTreeMap;

use super::{
    segment, Call, CatalogDeregistration, CatalogNode, CatalogRegistration, CatalogService, Client,
    ConsulError, Indexed, Node, QueryOptions, MAX_LIST_BODY,
};

impl Client {
    /// Every service name with the union of its instances' tags.
    pub async fn catalog_services(
        &self,
        opts: &QueryOptions,
    ) -> Result<Indexed<BTreeMap<String, Vec<String>>>, ConsulError> {
        let call = Call::get("catalog/services")
            .limit(MAX_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<BTreeMap<String, Option<Vec<String>>>>> = self.read(call).await?;
        Ok(found.map(|m| {
            m.unwrap_or_default()
                .into_iter()
                .map(|(name, tags)| (name, tags.unwrap_or_default()))
                .collect()
        }))
    }

    /// The instances of service `name`, only those tagged `tag` when given.
    pub async fn catalog_service(
        &self,
        name: &str,
        tag: Option<&str>,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<CatalogService>>, ConsulError> {
        let call = Call::get(format!("catalog/service/{}", segment(name)))
            .param_opt("tag", tag)
            .limit(MAX_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<Vec<CatalogService>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// Every node.
    pub async fn catalog_nodes(
        &self,
        opts: &QueryOptions,
    ) -> Result<Indexed<Vec<Node>>, ConsulError> {
        let call = Call::get("catalog/nodes")
            .limit(MAX_LIST_BODY)
            .options(opts);
        let found: Indexed<Option<Vec<Node>>> = self.read(call).await?;
        Ok(found.map(Option::unwrap_or_default))
    }

    /// The node with its services, or `None` if the catalog has no such node (Consul answers
    /// 200 with `null`).
    pub async fn catalog_node(
        &self,
        node: &str,
        opts: &QueryOptions,
    ) -> Result<Indexed<Option<CatalogNode>>, ConsulError> {
        let call = Call::get(format!("catalog/node/{}", segment(node))).options(opts);
        self.read(call).await
    }

    /// Registers or updates a node, and a service or check on it.
    #[tracing::instrument(skip(self, registration), fields(node = %registration.node), err)]
    pub async fn catalog_register(
        &self,
        registration: &CatalogRegistration,
    ) -> Result<(), ConsulError> {
        let answer = self
            .send_json(Call::put("catalog/register"), registration)
            .await?;
        answer.bool().map(|_| ())
    }

    /// Removes a node, or one service or check from it.
    #[tracing::instrument(skip(self, deregistration), fields(node = %deregistration.node), err)]
    pub async fn catalog_deregister(
        &self,
        deregistration: &CatalogDeregistration,
    ) -> Result<(), ConsulError> {
        let answer = self
            .send_json(Call::put("catalog/deregister"), deregistration)
            .await?;
        answer.bool().map(|_| ())
    }
}
